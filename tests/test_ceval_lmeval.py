"""Faithfulness: our lm-eval-style loglik equals lm-evaluation-harness 0.4.13's ceval-valid task, item by item."""

from pathlib import Path

import numpy as np
import pytest

from medqwen.exams.runner import CHOICES, load_questions, score_questions

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "benchmark" / "ceval-exam"
FIXTURE = REPO / "tests" / "fixtures" / "ceval_lmeval" / "ceval-local_clinical_medicine.yaml"


@pytest.fixture(scope="module")
def lm_eval_samples(tiny_model_dir, tmp_path_factory):
    """Run the installed harness (HFLM, 5-shot) on the team-written val items; one sample per item."""
    import lm_eval  # pinned in requirements-dev.txt: missing, the parity test fails rather than skips
    from lm_eval.tasks import TaskManager

    assert lm_eval.__version__ == "0.4.13", "this parity test pins the harness version it was written against"
    task_dir = tmp_path_factory.mktemp("lm_eval_tasks")
    ceval_dir = Path(lm_eval.__file__).parent / "tasks" / "ceval"
    text = FIXTURE.read_text(encoding="utf-8").replace("LM_EVAL_CEVAL_DIR", str(ceval_dir))
    (task_dir / FIXTURE.name).write_text(text.replace("DATA_DIR", str(DATA)), encoding="utf-8")
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model_dir},dtype=float32", tasks=["ceval-local_clinical_medicine"],
        num_fewshot=5, batch_size=8, device="cpu", log_samples=True,
        task_manager=TaskManager(include_path=str(task_dir)))
    return sorted(results["samples"]["ceval-local_clinical_medicine"], key=lambda s: s["doc_id"])


def test_lm_eval_style_matches_harness(tiny_model_dir, lm_eval_samples):
    from medqwen.exams.backends import HFBackend

    questions = load_questions(DATA, "clinical_medicine", "val")
    shots = load_questions(DATA, "clinical_medicine", "dev")[:5]
    backend = HFBackend.from_pretrained(tiny_model_dir, device="cpu", dtype="float32", batch_size=8)
    ours = score_questions(backend, questions, shots, style="lm-eval", scoring="loglik")
    assert len(lm_eval_samples) == len(ours) == 20
    for sample, pred in zip(lm_eval_samples, ours):
        # The harness's requests: (context, continuation) per option; continuations carry the leading space.
        assert [args[0] for args in sample["arguments"]] == [pred.prompt] * 4, "prompt differs from the harness's"
        assert [args[1] for args in sample["arguments"]] == [" A", " B", " C", " D"]
        theirs = np.array([resp[0] for resp in sample["filtered_resps"]], dtype=float)
        mine = np.array([pred.logprobs[c] for c in CHOICES])
        np.testing.assert_allclose(mine, theirs, atol=1e-4)
        assert CHOICES[int(np.argmax(theirs))] == pred.pred
        assert sample["acc"] == float(pred.correct)
