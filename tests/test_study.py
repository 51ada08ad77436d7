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


def test_a_new_lenet_study_gets_its_base_recipe_and_keeps_it(storage):
    from fmnist_search.core.presets import base_recipe

    _, spec = open_study(storage, "new", {"model": "lenet", "fixed": {"flip": False}, "momentum": 0.5}, base=True)
    recipe = base_recipe("lenet")
    assert spec.batch_size == recipe["batch_size"] and spec.momentum == 0.5  # a flag wins, key by key
    assert spec.fixed == {**recipe["fixed"], "flip": False}
    _, again = open_study(storage, "new", {"model": "lenet"}, base=True)  # resumed: the stored recipe, unchanged
    assert again == spec
    assert (spec.lr_min, spec.lr_max) == (recipe["lr_min"], recipe["lr_max"])
    _, low = open_study(storage, "low", {"model": "lenet", "lr_max": 0.005}, base=True)
    assert (low.lr_min, low.lr_max) == (1e-3, 0.005)  # one bound given: the range is the user's, not half the base's


def test_old_studies_presets_and_wider_spaces_get_no_base_recipe(storage):
    _, old = open_study(storage, "old", {"model": "lenet"})  # created before base recipes
    _, resumed = open_study(storage, "old", {"model": "lenet"}, base=True)
    assert resumed == old and old.fixed == {} and old.momentum == 0.9 and old.batch_size == 256
    _, full = open_study(storage, "full", {"model": "lenet", "space": "full"}, base=True)
    assert full.fixed == {}  # the full space samples these itself
    _, other = open_study(storage, "r18", {"model": "resnet18"}, base=True)
    assert other.fixed == {}  # only LeNet has one
    from fmnist_search.app.planning import plan_studies

    (_, _, _, base), *_ = plan_studies("seed-report", None, "lenet", None, {}, None)
    assert base is False  # a preset is a complete recipe (seed-report: the report's protocol)
    (_, _, _, base), *_ = plan_studies(None, "lenet", None, None, {}, None)
    assert base is True


def test_resuming_with_part_of_the_fixed_values_is_fine_and_a_different_one_refused(storage):
    open_study(storage, "kd", {"model": "lenet", "fixed": {"distill": 0.5, "teacher": "airbench-tuned"}}, base=True)
    _, spec = open_study(storage, "kd", {"model": "lenet", "fixed": {"distill": 0.5}})  # the same --fix again
    assert spec.fixed["distill"] == 0.5 and spec.fixed["flip"] is True
    # the refusal names the setting that differs, stored and asked, not the whole table
    with pytest.raises(ConfigError, match=r"created with fixed\.distill=0\.5, this run asks for fixed\.distill=0\.7;"):
        open_study(storage, "kd", {"fixed": {"distill": 0.7}})
    with pytest.raises(ConfigError, match=r"created with fixed\.crop=\(unset\), this run asks for fixed\.crop=2;"):
        open_study(storage, "kd", {"fixed": {"crop": 2}})  # a value the study never had


def test_the_base_recipe_is_a_preset_of_its_own(storage):
    """`run --preset lenet-base` makes the study `run --model lenet` makes: one recipe, one file."""
    from fmnist_search.app.planning import plan_studies

    _, by_model = open_study(storage, "by-model", {"model": "lenet"}, base=True)
    [(_, requested, _, base)] = plan_studies("lenet-base", None, None, "by-preset", {}, None)
    _, by_preset = open_study(storage, "by-preset", requested, base=base)
    assert not base and by_preset == by_model and by_model.fixed["schedule"] == "cosine"
