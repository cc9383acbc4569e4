"""What editing a trial key changes lives on its schema field; the two lists derived from it stay what they were."""
import pytest

from ablate.checkpoint import RESUMABLE_ACROSS
from ablate.config import DATA_CONFIGS, EFFECTS, TrialConfig, flatten, keys_with_effect
from ablate.spec import OPERATIONAL_KEYS

# the hand-written lists these were before each field said its effect (train.seed and train.channels_last keep a
# study comparable but are no checkpoint's to resume across)
HAND_OPERATIONAL = ("tracking.", "train.seed", "train.progress_bar", "train.compile", "train.deterministic",
                    "train.channels_last",
                    "train.accelerator", "train.devices", "train.ddp_timeout_s", "train.checkpoint_",
                    "data.num_workers", "data.on_device", "data.download", "data.root")
HAND_RESUMABLE = ("tracking.", "train.progress_bar", "train.checkpoint_", "train.compile", "train.deterministic",
                  "train.accelerator",
                  "train.devices", "train.ddp_timeout_s", "data.num_workers", "data.on_device", "data.root",
                  "data.download")


def every_trial_key() -> set[str]:
    """Every dotted key a trial config has, over every dataset's data section."""
    return {key for data in DATA_CONFIGS for key in flatten(TrialConfig(data=data()))}


def test_the_derived_lists_are_pinned():
    assert OPERATIONAL_KEYS == (
        "data.num_workers", "data.on_device", "data.root", "data.download", "train.accelerator", "train.devices",
        "train.ddp_timeout_s", "train.channels_last", "train.compile", "train.deterministic", "train.seed",
        "train.progress_bar", "train.checkpoint_every", "train.checkpoint_dir", "tracking.")
    assert RESUMABLE_ACROSS == (
        "data.num_workers", "data.on_device", "data.root", "data.download", "train.accelerator", "train.devices",
        "train.ddp_timeout_s", "train.compile", "train.deterministic", "train.progress_bar", "train.checkpoint_every",
        "train.checkpoint_dir", "tracking.")


@pytest.mark.parametrize("derived, by_hand", [(OPERATIONAL_KEYS, HAND_OPERATIONAL),
                                              (RESUMABLE_ACROSS, HAND_RESUMABLE)])
def test_the_derived_lists_cover_exactly_the_keys_the_hand_written_ones_did(derived, by_hand):
    keys = every_trial_key()
    assert {k for k in keys if k.startswith(derived)} == {k for k in keys if k.startswith(by_hand)}
    assert all(any(k.startswith(prefix) for k in keys) for prefix in derived)  # no prefix that matches nothing


def test_an_unmarked_key_changes_the_result_and_a_section_mark_covers_the_section():
    assert "train.lr" not in OPERATIONAL_KEYS and "model.backbone" not in OPERATIONAL_KEYS
    assert keys_with_effect(TrialConfig, "result")[:2] == ("model.backbone", "model.pretrained")
    assert "tracking." in keys_with_effect(TrialConfig, "record")  # the whole section, by its prefix
    with pytest.raises(ValueError, match="not effects"):
        keys_with_effect(TrialConfig, "runs")
    assert set(EFFECTS) == {"result", "repeat", "layout", "run", "record"}
