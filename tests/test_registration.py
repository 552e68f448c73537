"""adpretrain_hf.registration: using the models (importing adpretrain_hf.modeling, or register()) registers
the ADPretrain and detector configs/models, the image processor and both pipeline tasks."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("entry", ["import adpretrain_hf.modeling", "import adpretrain_hf; adpretrain_hf.register()",
                                   "import adpretrain_hf.detectors"])
def test_using_the_models_registers_everything(entry):
    probe = (
        f"{entry}\nfrom transformers import AutoConfig, AutoImageProcessor\nfrom transformers.pipelines import PIPELINE_REGISTRY\n"
        "print(type(AutoConfig.for_model('adpretrain-detector')).__name__, type(AutoConfig.for_model('adpretrain')).__name__, "
        "sorted(t for t in PIPELINE_REGISTRY.get_supported_tasks() if t.startswith('anomaly')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ADPretrainDetectorConfig ADPretrainConfig ['anomaly-detection', 'anomaly-features']" in result.stdout
