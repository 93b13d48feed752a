import json

import numpy as np
import pytest

import mivar_jax as mv
from tests import reference


class _Cfg:
    parallel_attn_mlp = False

    def __init__(self, n_layers, n_heads):
        self.n_layers, self.n_heads = n_layers, n_heads


@pytest.mark.parametrize(
    ("layers", "heads", "edges"),
    [(12, 12, 32_491), (30, 9, 123_211)],  # gpt2-small, SmolLM2-135M
)
def test_edge_counts_of_real_configurations(layers, heads, edges):
    g = mv.Graph(n_layers=layers, n_heads=heads)
    assert g.n_edges == edges
    assert g.n_src == 1 + layers * (heads + 1)
    assert g.n_dst == layers * (3 * heads + 1) + 1
    assert len(g.edge_names) == edges == len(set(g.edge_names))


def test_names_and_orders_follow_the_reference_conventions():
    g = mv.Graph(n_layers=2, n_heads=2)
    assert g.src_names == ("input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1")
    assert g.dst_names[:7] == ("a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0")
    assert g.dst_names[-1] == "logits"
    src, dst = reference.names(_Cfg(2, 2))
    assert list(g.src_names) == src and list(g.dst_names) == dst


@pytest.mark.parametrize("layers,heads", [(1, 1), (2, 3), (4, 2)])
def test_edges_are_exactly_the_upstream_pairs_ordered_by_destination(layers, heads):
    g = mv.Graph(n_layers=layers, n_heads=heads)
    expected = [f"{s}->{d}" for d in g.dst_names for s in g.src_names if reference.upstream(_Cfg(layers, heads), s, d)]
    assert list(g.edge_names) == expected
    for e, name in enumerate(g.edge_names):
        assert g.edge_index(name) == e


def test_parallel_blocks_drop_same_layer_head_to_mlp_edges():
    seq, par = mv.Graph(2, 3), mv.Graph(2, 3, parallel_attn_mlp=True)
    assert seq.n_edges - par.n_edges == 2 * 3
    assert "a1.h2->m1" in seq.edge_names and "a1.h2->m1" not in par.edge_names


def test_dense_flat_round_trip_and_own_slots():
    g = mv.Graph(3, 2)
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(4, g.n_edges)).astype(np.float32)
    dense = g.to_dense(flat)
    assert dense.shape == (4, g.n_src, g.n_dst)
    assert np.all(dense[:, ~g.valid] == 0)
    np.testing.assert_array_equal(g.to_flat(dense), flat)
    own = g.own_slots
    assert own[0].sum() == 0
    assert list(own.sum(1)[1:]) == [3, 3, 1] * 3
    assert own[g.src_index("a2.h1"), g.dst_index("a2.h1<k>")]


def test_bad_names_and_shapes_are_clear_errors():
    g = mv.Graph(2, 2)
    with pytest.raises(KeyError, match="not upstream"):
        g.edge_index("m1->a0.h0<q>")
    with pytest.raises(KeyError, match="unknown source"):
        g.edge_index("a9.h0->logits")
    with pytest.raises(ValueError, match="edges"):
        g.to_dense(np.zeros(3))
    with pytest.raises(ValueError):
        mv.Graph(0, 2)


def test_eap_ig_json_round_trip(tmp_path):
    g = mv.Graph(n_layers=3, n_heads=2, d_model=16)
    rng = np.random.default_rng(1)
    scores = rng.normal(size=g.n_edges).astype(np.float32)
    in_graph = rng.random(g.n_edges) < 0.3
    node_scores = rng.normal(size=g.n_src).astype(np.float32)
    path = tmp_path / "graph.json"
    g.to_json(path, scores=scores, in_graph=in_graph, node_scores=node_scores)

    raw = json.loads(path.read_text())  # the reference's field names
    assert set(raw) == {"cfg", "nodes", "edges"}
    assert raw["cfg"] == {"n_layers": 3, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 16}
    assert set(raw["edges"]["input->a0.h0<q>"]) == {"score", "in_graph"}
    assert raw["nodes"]["logits"]["in_graph"] is True

    back = mv.Graph.from_json(path)
    assert back.graph == g
    np.testing.assert_array_equal(back.scores, scores)
    np.testing.assert_array_equal(back.in_graph, in_graph)
    np.testing.assert_array_equal(back.node_scores, node_scores)
    # default node membership: a node is in the graph iff an included edge touches it
    touched = np.zeros(g.n_src, bool)
    touched[g.edge_src[in_graph]] = True
    touched |= (g.own_slots & np.isin(np.arange(g.n_dst), g.edge_dst[in_graph])[None]).any(1)
    np.testing.assert_array_equal(back.nodes_in_graph, touched)


def test_json_errors_name_the_problem(tmp_path):
    g = mv.Graph(2, 2)
    d = g.to_json()
    with pytest.raises(ValueError, match="lacks the key"):
        mv.Graph.from_json({"cfg": d["cfg"], "nodes": d["nodes"]})
    bad = json.loads(json.dumps(d))
    bad["edges"]["m1->a0.h0<q>"] = {"score": 1.0, "in_graph": True}
    with pytest.raises(ValueError, match="not upstream"):
        mv.Graph.from_json(bad)
    short = json.loads(json.dumps(d))
    short["edges"].pop("input->logits")
    with pytest.raises(ValueError, match="first missing"):
        mv.Graph.from_json(short)
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        mv.Graph.from_json(path)
