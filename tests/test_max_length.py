"""``max_length`` is checked against the model's position embeddings: the trainer refuses a length
the model cannot embed with exit 2 and a message naming the limit, before any data or training."""

import subprocess
import sys
from pathlib import Path

import pytest

from trainers.errors import ConfigError
from trainers.model import check_max_length, embedded_model_path, position_limit

ROOT = Path(__file__).resolve().parents[1]


def test_the_limits_of_the_embedded_minilm_and_other_families():
    from transformers import AutoConfig, BertConfig, RobertaConfig

    minilm = AutoConfig.from_pretrained(embedded_model_path())
    assert position_limit(minilm) == 512
    check_max_length(minilm, 512)
    with pytest.raises(ConfigError, match=r"max_length 100000 is longer than the model's 512 position embeddings "
                                          r"\(bert model\); use --max-length 512 or less"):
        check_max_length(minilm, 100000)
    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512  # ids start at 2
    assert position_limit(BertConfig(max_position_embeddings=128)) == 128


def test_the_trainer_exits_2_naming_the_limit(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "trainers.train", "--model", "tiny-random", "--task", "mr",
                           "--max-length", "100000", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: max_length 100000 is longer than the model's 128 position embeddings"), lines
    assert "--max-length 128" in lines[-1]
    assert not out.exists(), "nothing written"
