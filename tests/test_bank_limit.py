"""--bank-limit: a later task combines a bounded number of bank filters, so its cost stays flat."""
import pytest
import torch

from pbgan_core.bank import LayerBank
from pbgan_core.cli import main
from pbgan_core.engine import load_generators
from pbgan_core.errors import PbganError
from pbgan_core.plugins import get_plugins
from pbgan_core.store import ModelStore
from pbgan_plugins.networks import build_generator
from pbgan_plugins.piggyback import PiggybackConv, PiggybackFactorizer, candidate_weights, choose_rows, choose_segments

from .conftest import FACADES, TINY, needs_data


def generator():
    return build_generator("auto", 3, 3, ngf=8, size=32)


def grown_sequence(tasks, opts, spans=None):
    """Wrap tasks 1..`tasks` from shapes as training does; the stored ratio and basis of each, and
    in `spans` the number of bank segments each task's rows come from."""
    fac = PiggybackFactorizer()
    standalone = sum(p.numel() for p in generator().parameters())
    first = fac.wrap(generator(), {}, opts)
    segments, previous, rows = [fac.split(first)[1]], None, []
    for _ in range(2, tasks + 1):
        torch.manual_seed(0)
        bank = {k: LayerBank([(len(s[k]), lambda s=s, k=k: s[k]) for s in segments], segments[0][k].shape[1:])
                for k in segments[0]}
        gen = fac.wrap(generator(), bank, opts, previous=previous)
        if spans is not None:
            spans.append(len({int(p) for m_path, m in gen.named_modules() if getattr(m, "rows", None) is not None
                              for p in bank[m_path].part_of(m.rows)}))
        for m in gen.modules():  # trained coefficients: not all zero
            if isinstance(m, PiggybackConv) and m.coef is not None:
                torch.nn.init.normal_(m.coef)
        kept, added = fac.split(gen)
        biggest = max((m for m in gen.modules() if isinstance(m, PiggybackConv) and m.coef is not None),
                      key=lambda m: m.out_filters * m.bank[0].numel())
        rows.append((fac.stored_parameters(gen) / standalone, biggest.bank.shape[0], biggest.coef.shape[0]))
        previous = {"state": fac.join(kept, added), "options": opts}
        segments.append(added)
    return rows


def test_a_bounded_task_costs_the_same_however_large_the_bank_grows():
    bounded = grown_sequence(8, {"bank_limit": 1.0})
    whole = grown_sequence(8, {"bank_limit": 0.0})
    # the whole bank: every task combines more filters with fewer free ones
    assert whole[-1][1] > whole[0][1]
    # bounded: the same basis, coefficients and stored share at task 2 and task 8
    assert bounded[0][1] == bounded[-1][1] and bounded[0][2] == bounded[-1][2]
    assert all(r[0] == pytest.approx(bounded[0][0]) for r in bounded)
    assert bounded[0][0] <= 0.3


def test_a_bounded_task_takes_its_rows_from_a_bounded_number_of_bank_files():
    spans, unbounded = [], []
    grown_sequence(12, {"bank_limit": 1.0, "bank_segments": 6}, spans)
    grown_sequence(12, {"bank_limit": 1.0, "bank_segments": 0}, unbounded)
    assert max(spans) == 6 and max(unbounded) > 6  # at 0.195 free filters a file, 6 files hold enough rows
    assert spans[:5] == unbounded[:5]  # the bound binds only once more files are in use


def test_segments_kept_are_those_carrying_most_of_the_latest_task():
    parts = [torch.eye(36)[i * 4: i * 4 + 4].view(4, 4, 3, 3) for i in range(5)]  # 5 files of 4 rows
    bank = LayerBank([(4, lambda p=p: p) for p in parts], (4, 3, 3))
    # the latest task combined rows 0, 5, 9, 13 (files 0, 1, 2, 3) and added file 4 (its free filters)
    previous = {"rows": torch.tensor([0, 5, 9, 13]), "free": torch.zeros(4, 4, 3, 3),
                "coef": torch.tensor([[0.1], [9.0], [0.2], [8.0], [0.0], [0.0], [0.0], [0.0]])}
    weights = {"layer": candidate_weights(bank, previous, 1.0)}
    kept = choose_segments({"layer": bank}, {"layer": 4}, weights, 2)
    assert kept == [1, 3]  # files 1 and 3 carry more than the free filters' file 4 (weight 1 a row)
    rows = choose_rows(bank, 4, *weights["layer"], kept)
    assert rows.tolist() == [5, 13, 14, 15]  # the two weighted rows, then the newest others of those files
    # files too small for the layer's count: more are kept, by weight
    assert choose_segments({"layer": bank}, {"layer": 9}, weights, 2) == [1, 3, 4]
    assert choose_segments({"layer": bank}, {"layer": 4}, weights, 0) is None


def test_rows_kept_are_those_the_latest_task_used_most():
    bank = torch.eye(36)[:10].view(10, 4, 3, 3)  # filters of norm 1 each
    # the latest task combined rows 0-5 (weights by row) and added free rows 8, 9
    previous = {"rows": torch.tensor([0, 1, 2, 3, 4, 5]), "free": torch.zeros(2, 4, 3, 3),
                "coef": torch.tensor([[5.0], [0.0], [3.0], [0.01], [4.0], [2.0]])}
    chosen = choose_rows(bank, 5, *candidate_weights(LayerBank.of(bank), previous, 1.0))
    # weights 5, 4, 3, 2 for rows 0, 4, 2, 5; 1 for each free row (8 first on a tie); 0.01 and 0 dropped
    assert chosen.tolist() == [0, 2, 4, 5, 8]
    # without the latest task's coefficients: the newest rows
    assert choose_rows(bank, 3, *candidate_weights(LayerBank.of(bank), None, 1.0)).tolist() == [7, 8, 9]


@needs_data(FACADES)
def test_a_bounded_sequence_stores_its_rows_and_reloads_exactly(tmp_path):
    model = tmp_path / "m"
    outputs = {}
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    for task in ("one", "two", "three", "four"):
        assert main(["train", "--arch", "pix2pix", "--task", task, "--model-dir", str(model), "--data", str(FACADES),
                     "--direction", "BtoA", "--steps", "2", "--bank-limit", "1", *TINY]) == 0
        _, gens = load_generators(ModelStore(model), get_plugins(), task)
        with torch.no_grad():
            outputs[task] = gens["G"](x)
    store = ModelStore(model)
    _, tensors, _, _ = store.load_task("four")
    assert any(k.endswith(".rows") for k in tensors)  # the rows each layer combined travel with the task
    ratios = [t["params"]["stored"] / t["params"]["standalone"] for t in store.tasks[1:]]
    assert max(ratios) - min(ratios) < 0.01
    for task, before in outputs.items():  # earlier tasks unchanged; unmaterialized equals materialized
        _, dense = load_generators(ModelStore(model), get_plugins(), task)
        _, lazy = load_generators(ModelStore(model), get_plugins(), task, materialize=False)
        with torch.no_grad():
            assert torch.equal(dense["G"](x), before)
            assert torch.allclose(lazy["G"](x), before, atol=1e-5)
    # loading reads the task's own files and only the bank files that hold the rows it combines
    read = []
    fresh = ModelStore(model)
    original = fresh.read_tensors
    fresh.read_tensors = lambda rel, sha: (read.append(rel), original(rel, sha))[1]
    load_generators(fresh, get_plugins(), "four")
    bank = fresh.load_bank(3)
    needed = set()
    for key, rows in tensors.items():
        if key.endswith(".rows"):
            layer = key[: -len(".rows")]
            starts = torch.tensor([s.shapes[layer][0] for s in bank.segments]).cumsum(0)
            needed |= {bank.segments[int(i)].task for i in torch.bucketize(rows, starts, right=True).unique()}
    assert sorted(rel for rel in read if rel.startswith("bank/")) == sorted(
        e["bank_file"] for e in store.tasks if e["name"] in needed | {"four"})
    # an earlier bank file whose header is damaged is one clear error, naming it, even when unread
    damaged = model / store.task("two")["bank_file"]
    damaged.write_bytes(damaged.read_bytes()[:3])
    with pytest.raises(PbganError, match=f"{damaged.name} is not a valid safetensors file"):
        load_generators(ModelStore(model), get_plugins(), "four")


def test_a_layer_bank_reads_only_the_parts_holding_the_rows_asked_for():
    parts = [torch.randn(n, 2, 3, 3) for n in (4, 1, 5)]
    read = []

    def reader(i):
        return lambda: (read.append(i), parts[i])[1]

    bank = LayerBank([(len(p), reader(i)) for i, p in enumerate(parts)], (2, 3, 3))
    whole = torch.cat(parts)
    assert len(bank) == 10 and bank.shape == whole.shape
    index = torch.tensor([9, 0, 5, 3, 6])
    assert torch.equal(bank.rows(index), whole[index]) and sorted(set(read)) == [0, 2]
    assert torch.equal(bank.rows(torch.tensor([4])), whole[4:5]) and read[-1] == 1
    assert torch.equal(bank.all(), whole)
    with pytest.raises(IndexError):
        bank.rows(torch.tensor([10]))
    assert torch.equal(LayerBank.of(whole).rows(index), whole[index])


def test_filter_sizes_do_not_compound_from_task_to_task():
    """Filters followed by normalization drift in size; a later task must not start from the drift."""
    fac = PiggybackFactorizer()
    bank = fac.split(fac.wrap(generator(), {}, {}))[1]
    layers = {}
    for scale in (1.0, 1000.0):  # the same bank, as stored and grown a thousandfold
        warm = generator()
        with torch.no_grad():
            for p in warm.parameters():
                p.mul_(scale)
        torch.manual_seed(0)
        gen = fac.wrap(warm, {k: v * scale for k, v in bank.items()}, {})
        layers[scale] = [m for m in gen.modules() if isinstance(m, PiggybackConv) and m.coef is not None]
    for small, large in zip(layers[1.0], layers[1000.0]):
        assert torch.allclose(small.bank, large.bank, atol=1e-6)  # combined at unit size
        assert torch.allclose(small.bank.flatten(1).norm(dim=1), torch.ones(len(small.bank)))
        assert 0.5 < float(large.free.detach().flatten(1).norm(dim=1).mean()) < 2  # fresh at unit size
    # --no-unit-rows: the bank as stored, and free filters at the warm start's size
    torch.manual_seed(0)
    raw = fac.wrap(generator(), {k: v * 1000 for k, v in bank.items()}, {"unit_rows": False})
    layer = next(m for m in raw.modules() if isinstance(m, PiggybackConv) and m.coef is not None)
    assert float(layer.bank.flatten(1).norm(dim=1).min()) > 100
