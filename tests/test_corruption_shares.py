"""experiments/corruption_shares.py: the experiment's corruptions (a 256 px render corrupted
with the paper's settings, carried down) change about the paper's share of pixels."""

import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shares():
  spec = importlib.util.spec_from_file_location("corruption_shares_exp",
                                                REPO / "experiments" / "corruption_shares.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.report(sizes=(32,), num_maps=24, with_best_ds=False)


def test_edge_and_random_match_the_paper_share(shares):
  paper, ours = shares["paper_256"], shares["via_render_32"]
  assert 0.05 < paper["edge"] < 0.13 and abs(paper["random"] - 0.1) < 0.01
  for v in ("edge", "random"):  # within 15 % of the paper-setting share
    assert abs(ours[v] - paper[v]) < 0.15 * paper[v], (v, ours[v], paper[v])


def test_ds_is_near_the_paper_share_and_far_below_the_former_setting(shares):
  paper, ours, old = shares["paper_256"], shares["via_render_32"], shares["current_32"]
  # DS undershoots (the 32 px clean map and the 256 px render differ by up to a pixel at
  # boundaries, so some sampled changes land on the same class): within a factor of 2.
  assert paper["ds"] / 2 < ours["ds"] < 2 * paper["ds"]
  assert old["ds"] > 4 * paper["ds"] and old["edge"] > 1.8 * paper["edge"]
