import optuna
import pytest

from fmnist_search.core.errors import ConfigError, StorageError
from fmnist_search.search.study import load_study, make_storage, mask_url, open_study


@pytest.fixture
def storage(tmp_path):
    return make_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=False)


def test_new_study_stores_resolved_settings(storage):
    study, spec = open_study(storage, "a", {"model": "lenet", "epochs": 3})
    assert spec.epochs == 3 and spec.batch_size == 256
    assert study.user_attrs["epochs"] == 3 and study.user_attrs["model"] == "lenet"
    assert study.user_attrs["lr_min"] == 1e-3 and study.user_attrs["train_size"] is None


def test_resume_takes_stored_settings_and_adds_trials(storage):
    study, _ = open_study(storage, "a", {"model": "lenet", "epochs": 3, "sampler": "random"})
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 0.5, log=True), n_trials=2)
    again, spec = open_study(storage, "a", {})  # a bare resume
    assert spec.epochs == 3 and spec.sampler == "random"
    again.optimize(lambda t: t.suggest_float("lr", 1e-3, 0.5, log=True), n_trials=2)
    assert len(optuna.load_study(study_name="a", storage=storage).trials) == 4


@pytest.mark.parametrize("key,value", [("model", "resnet18"), ("epochs", 5), ("val_size", 5000)])
def test_resume_with_conflicting_setting_is_refused(storage, key, value):
    open_study(storage, "a", {"model": "lenet", "epochs": 3})
    with pytest.raises(ConfigError, match=f"created with {key}=.*asks for {key}="):
        open_study(storage, "a", {key: value})


def test_resume_with_same_values_is_fine(storage):
    open_study(storage, "a", {"model": "lenet", "epochs": 3})
    _, spec = open_study(storage, "a", {"model": "lenet", "epochs": 3})
    assert spec.epochs == 3


def test_unknown_study_lists_existing(storage):
    open_study(storage, "first", {"model": "lenet"})
    with pytest.raises(StorageError, match=r"no study named 'nope'.*first"):
        load_study(storage, "nope")


@pytest.mark.parametrize(
    "url,reason",
    [
        ("not a url", "cannot open storage"),
        ("sqlite:////proc/forbidden/x.db", "cannot"),
        ("postgresql://u:secret@127.0.0.1:1/db", "cannot open storage"),
    ],
)
def test_bad_storage_urls(url, reason):
    with pytest.raises(StorageError, match=reason) as info:
        make_storage(url)
    assert "secret" not in str(info.value)


def test_mask_url_hides_passwords():
    assert mask_url("postgresql://bob:hunter2@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("sqlite:///studies/fmnist.db") == "sqlite:///studies/fmnist.db"


def test_only_our_sqlite_stores_are_switched_to_wal(tmp_path):
    """WAL for the study store (several processes share it); other SQLite engines in the process untouched."""
    from sqlalchemy import create_engine

    store = make_storage(f"sqlite:///{tmp_path}/ours.db", heartbeat=False)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    other = create_engine(f"sqlite:///{tmp_path}/theirs.db")
    with other.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
