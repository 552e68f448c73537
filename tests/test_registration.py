"""adpretrain_hf.registration: importing the package registers the detector config and both pipeline tasks."""

import subprocess
import sys


def test_import_still_registers_everything():
    probe = (
        "import adpretrain_hf\nfrom transformers import AutoConfig\nfrom transformers.pipelines import PIPELINE_REGISTRY\n"
        "print(type(AutoConfig.for_model('adpretrain-detector')).__name__, sorted(t for t in PIPELINE_REGISTRY.get_supported_tasks() if t.startswith('anomaly')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ADPretrainDetectorConfig ['anomaly-detection', 'anomaly-features']" in result.stdout
