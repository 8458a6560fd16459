"""A store is built from one StoreOptions, whose defaults are the settings' defaults."""

from __future__ import annotations

from dataclasses import fields

from service.config import DEFAULTS, SETTINGS, StoreOptions, from_env
from service.storage import FileStore
from service.store import build_store


def test_each_option_defaults_to_its_setting():
    keys = {setting.key for setting in SETTINGS}
    for option in fields(StoreOptions):
        key = option.metadata["config_key"]
        assert key in keys, option.name
        assert getattr(StoreOptions(), option.name) == DEFAULTS[key], option.name


def test_the_environment_reaches_the_store(tmp_path):
    config = from_env(
        {
            "WORKFLOW_STATE_URL": f"file://{tmp_path}/s.json",
            "WORKFLOW_STATE_TTL": "7",
            "WORKFLOW_STATE_LOCK_WAIT": "0.3",
            "WORKFLOW_STATE_KEY": "app:state",
        }
    )
    store = build_store(config)
    assert (store.ttl, store.lock_wait, store.key) == (7, 0.3, "app:state")
    assert store.stale_ttl == DEFAULTS["STATE_STALE_TTL"]
    assert store.cipher is None


def test_a_store_made_by_hand_takes_overrides_on_the_defaults(tmp_path):
    store = FileStore(f"file://{tmp_path}/s.json", ttl=3)
    assert store.options == StoreOptions(ttl=3)
    assert store.lock_timeout == DEFAULTS["LOCK_TIMEOUT"]
