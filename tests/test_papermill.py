"""The papermill template nbs/90_run_fold.ipynb: tagged parameters cell, no committed outputs, one tiny run."""
import json, os, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "nbs" / "90_run_fold.ipynb"


@pytest.fixture(scope="module")
def nb():
    return json.loads(TEMPLATE.read_text())


def _params_cell(nb):
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell must carry the 'parameters' tag in its metadata"
    return "".join(cells[0]["source"])


def test_template_has_a_tagged_parameters_cell(nb):
    src = _params_cell(nb)
    for name in ("data_path", "split", "graph", "out_dir", "max_epochs", "seed", "accelerator", "shift_mode",
                 "perturbation_key", "control_group"):
        assert re.search(rf"^{name}(: \w+)?\s*=", src, re.M), name
    for line in src.splitlines():   # an '=' inside a comment breaks papermill's parameter inference
        if "#" in line: assert "=" not in line.split("#", 1)[1], line


def test_template_is_committed_without_outputs(nb):
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c.get("outputs") for c in code)
    assert all(c.get("execution_count") is None for c in code)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_template_parameters_match_the_runner(nb):
    import papermill as pm
    from sccvae.experiment.config import TEMPLATE_PARAMS, PAPERMILL_PARAMS
    from sccvae.experiment.launch import find_template
    params = pm.inspect_notebook(str(TEMPLATE))
    assert {"data_path", "extra"} | set(TEMPLATE_PARAMS) <= set(params), set(TEMPLATE_PARAMS) - set(params)
    assert set(params) == set(PAPERMILL_PARAMS.values()) | {"extra"}, set(params) ^ (set(PAPERMILL_PARAMS.values()) | {"extra"})
    assert params["split"]["inferred_type_name"] == "int" and params["max_epochs"]["default"] == "2"
    assert find_template() == TEMPLATE.resolve()


def test_template_parameters_cell_is_generated_from_run_config(nb):
    "The parameters cell is exactly RunConfig's papermill fields with the template preset (regenerate it, never edit)."
    from sccvae.experiment.config import template_parameters, TEMPLATE_SETTINGS, RunConfig, run_fields, check_keywords
    assert _params_cell(nb) == template_parameters(), "regenerate the cell: template_parameters() of sccvae.experiment.config"
    check_keywords(TEMPLATE_SETTINGS)
    names = [f.name for f in run_fields(RunConfig, papermill=True)]
    assert "data" in names and "split" in names and "extra" not in names


def test_runner_is_a_thin_reexport():
    "Old import paths keep working for one release; they are the experiment wing's objects."
    from sccvae import runner
    from sccvae.experiment import fold, config, launch
    assert runner.run_fold is fold.run_fold and runner.TEMPLATE_PARAMS is config.TEMPLATE_PARAMS
    assert runner.find_template is launch.find_template and runner.GRAPHS == config.GRAPH_ORDER
    for name in runner.__all__: assert hasattr(runner, name), name


def test_papermill_runs_one_fold(tmp_path):
    "`papermill ... -p split 1 ...` runs fold 1 (not the default 0) into an absolute out_dir outside nbs/."
    import papermill as pm
    out_nb = tmp_path / "name" / "split_1" / "full" / "run_fold.ipynb"
    out_nb.parent.mkdir(parents=True)
    pm.execute_notebook(str(TEMPLATE), str(out_nb), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
                        parameters=dict(name="name", split=1, out_dir=str(tmp_path), max_epochs=1, accelerator="cpu",
                                        extra=json.dumps({"n_pred_cells": 32, "max_eval_cells": 64, "figures": False})))
    d = tmp_path / "name" / "split_1" / "full"
    assert (d / "DONE.json").exists() and (d / "report.md").exists()
    assert not (tmp_path / "name" / "split_0" / "full").exists()
    done = json.loads((d / "DONE.json").read_text())
    assert done["settings"]["split"] == 1 and done["settings"]["max_epochs"] == 1
    ran = json.loads(out_nb.read_text())
    tags = [c["metadata"].get("tags", []) for c in ran["cells"]]
    assert ["injected-parameters"] in tags
    assert not list((ROOT / "nbs").glob("**/run_fold.ipynb"))
