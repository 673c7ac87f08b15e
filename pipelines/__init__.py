"""kftune's Kubeflow Pipelines: component definitions, the pipeline DAG, and its compiled YAML.

Installed as ``kftune.pipelines`` (pyproject maps ``pipelines/`` there), so ``kftune compile`` works
from a plain, non-editable install. Importing this package imports nothing heavy; the submodules
import ``kfp`` (never torch):

- :mod:`kftune.pipelines.components`: one thin lightweight component per step;
- :mod:`kftune.pipelines.pipeline`: the DAG (:func:`~kftune.pipelines.pipeline.build_pipeline`);
- :mod:`kftune.pipelines.build`: compiling to ``compiled/`` and to Kubernetes manifests;
- :mod:`kftune.pipelines.local_runner`: KFP's local runner for ``kftune run``;
- :mod:`kftune.pipelines.client`: the KFP API client for ``kftune submit`` and ``kftune schedule``.

The commands under ``components/kftune/commands`` reach KFP only through these modules: no ``kfp`` import
lives under ``components/``.
"""

from pathlib import Path

#: The committed compiled pipelines (package data: installed with the package).
COMPILED_DIR = Path(__file__).resolve().parent / "compiled"
