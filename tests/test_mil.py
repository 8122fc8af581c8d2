"""MIL core (SPEC 6-7): gated attention, masking, TSS, Eq. 14 gradients, splits, metrics."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from clanet_store.learn import aggregators
from clanet_store.learn.aggregators import AGGREGATORS, GatedAttention, build_aggregator
from clanet_store.learn.bags import Bag, collate, padded_size
from clanet_store.learn.inference import predict_proba
from clanet_store.learn.metrics import (
    accuracy_by_fraction,
    batch_proba,
    confusion_matrix,
    evaluate,
    fraction_indices,
    macro_f1,
    mean_std,
)
from clanet_store.learn.model_file import load_model, save_model, training_record
from clanet_store.learn.splits import (
    Split,
    apply_split,
    make_split,
    make_splits,
)
from clanet_store.learn.training import (
    MILConfig,
    MiniBatch,
    batched_backward,
    init_model,
    per_bag_backward,
    train_mil,
)
from clanet_store.learn.tss import (
    REFERENCE_CANDIDATES,
    REFERENCE_SIGMA,
    IntervalPrior,
    TSSPrior,
    draw_intervals,
    fit_interval_prior,
    floor_mean_gap,
    sample_snippets,
    tss_sample,
    tss_weight,
    window_ids,
)
from clanet_store.pipelines.split_files import read_split, write_split


def make_bag(
    key: str,
    label: int,
    times: np.ndarray,
    embeddings: np.ndarray,
    mask: np.ndarray | None = None,
    batch: str = "line/b1",
    position: str = "A1",
) -> Bag:
    if mask is None:
        mask = np.ones(embeddings.shape[:2], dtype=bool)
    return Bag(key, label, batch, position, np.asarray(times, float), embeddings, mask)


def random_bags(
    rng: np.random.Generator, n: int, dim: int, k: int = 3, n_classes: int = 3
) -> list[Bag]:
    """Bags of 1-7 images at irregular times, some patches missing (NaN in their slots)."""
    bags = []
    for i in range(n):
        t = int(rng.integers(1, 8))
        embeddings = rng.normal(size=(t, k, dim))
        mask = rng.random((t, k)) < 0.8
        mask[:, 0] = True
        embeddings[~mask] = np.nan
        times = np.cumsum(rng.choice([1.0, 2.0, 2.5, 4.0], size=t))
        bags.append(make_bag(f"s{i}", i % n_classes, times, embeddings, mask))
    return bags


@pytest.fixture(params=[0.0, 1.01], ids=["padded", "packed"])
def pack_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a test through both ways of projecting instances (in place / gathered first)."""
    monkeypatch.setattr(aggregators, "PACK_BELOW", request.param)


# ----------------------------------------------------------------------------- aggregators


def test_gated_attention_formula_by_hand() -> None:
    """Two instances, one hidden unit in use: every number written out by hand."""
    model = GatedAttention(dim=2, n_classes=3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.V.weight[0] = torch.tensor([1.0, 0.0])
        model.U.weight[0] = torch.tensor([0.0, 1.0])
        model.w.weight[0, 0] = 1.0
        model.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
    # h1 = (1, 0), h2 = (0, 1), a third slot masked (with values that would matter).
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [50.0, -50.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    s1 = math.tanh(1.0) * 0.5  # tanh(V h1) * sigmoid(U h1) = tanh(1) * sigmoid(0)
    s2 = math.tanh(0.0) * (1 / (1 + math.exp(-1.0)))  # = 0
    a1 = math.exp(s1) / (math.exp(s1) + math.exp(s2))
    a2 = 1 - a1
    logits, attention = model.pool(x, mask)
    assert attention[0].tolist() == pytest.approx([a1, a2, 0.0], abs=1e-14)
    # z = a1 h1 + a2 h2 = (a1, a2); logits = (a1, a2, a1 + a2 + 0.5)
    assert logits[0].tolist() == pytest.approx([a1, a2, 1.5], abs=1e-14)


def numpy_gated(model: GatedAttention, h: np.ndarray) -> np.ndarray:
    """Ilse et al.'s formula in NumPy for one bag of valid instances h (n, D)."""
    weights = {name: p.detach().numpy() for name, p in model.named_parameters()}
    gate = np.tanh(h @ weights["V.weight"].T + weights["V.bias"]) * (
        1 / (1 + np.exp(-(h @ weights["U.weight"].T + weights["U.bias"])))
    )
    scores = gate @ weights["w.weight"][0] + weights["w.bias"][0]
    a = np.exp(scores - scores.max())
    a /= a.sum()
    return (a @ h) @ weights["classifier.weight"].T + weights["classifier.bias"]


def test_gated_attention_matches_numpy_on_padded_batches(pack_path: None) -> None:
    rng = np.random.default_rng(1)
    bags = random_bags(rng, 6, dim=8)
    model = init_model(MILConfig(k=3), 8, 3).double()
    x, mask = collate(bags, dtype=torch.float64)
    logits = model(x, mask).detach().numpy()
    for b, bag in enumerate(bags):
        expected = numpy_gated(model, bag.embeddings[bag.mask])
        np.testing.assert_allclose(logits[b], expected, rtol=0, atol=1e-12)


def test_fused_gated_attention_equals_the_reference(pack_path: None) -> None:
    """`pool` (fused V/U, packed or in place) gives `reference_pool`'s logits, attention and
    gradients: the fast path is only a faster way to write the formula."""
    rng = np.random.default_rng(3)
    bags = random_bags(rng, 7, dim=10)
    model = GatedAttention(dim=10, n_classes=4).double()
    x, mask = collate(bags, dtype=torch.float64)
    outputs = []
    for pool in (model.reference_pool, model.pool):
        model.zero_grad()
        logits, attention = pool(x, mask)
        logits.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        outputs.append((logits.detach(), attention.detach(), grads))
    (l1, a1, g1), (l2, a2, g2) = outputs
    torch.testing.assert_close(l2, l1, rtol=0, atol=1e-12)
    torch.testing.assert_close(a2, a1, rtol=0, atol=1e-12)
    for ref, fused in zip(g1, g2, strict=True):
        torch.testing.assert_close(fused, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_masked_instances_have_no_effect(name: str, pack_path: None) -> None:
    """Padding and missing patches: zero attention; any finite values there change nothing."""
    rng = np.random.default_rng(2)
    bags = random_bags(rng, 5, dim=6)
    model = build_aggregator(name, 6, 3).double()
    x, mask = collate(bags, dtype=torch.float64)
    alone = [model(*collate([bag], dtype=torch.float64)) for bag in bags]
    scrambled = torch.where(mask.unsqueeze(2), x, 1e3 * torch.randn(x.shape, dtype=x.dtype))
    assert not torch.equal(scrambled, x)
    for inputs in (x, scrambled):
        together = model(inputs, mask)
        for b in range(len(bags)):
            torch.testing.assert_close(together[b], alone[b][0], rtol=0, atol=1e-12)
    if name == "gated":
        attention = model.attention(scrambled, mask)
        assert torch.all(attention[~mask] == 0)
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(len(bags), dtype=x.dtype))


def test_patch_vote_is_a_majority_vote() -> None:
    model = build_aggregator("patch-vote", 2, 3).double()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        model.classifier.bias.zero_()
    # patch votes: class 0, class 1, class 1, (masked)
    x = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [0.0, 3.0], [9.0, 0.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    proba = torch.softmax(model(x, mask), dim=1)
    assert proba[0].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "scratch"])
def test_collate_selects_images_and_zeroes_missing_patches(reuse: bool) -> None:
    """Also into a reused scratch buffer full of NaN: padding and missing slots are zeroed."""
    embeddings = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    mask = np.array([[True, True], [True, False], [True, True], [False, True]])
    bag = make_bag("a", 0, np.arange(4.0), embeddings.copy(), mask)
    short = make_bag("b", 1, np.arange(1.0), embeddings[:1].copy())
    indices = [np.array([1, 3]), None]
    scratch = np.full(padded_size([bag, short], indices) + 5, np.nan, np.float32) if reuse else None
    x, m = collate([bag, short], indices, out=scratch)
    assert scratch is None or np.shares_memory(x.numpy(), scratch)
    assert x.shape == (2, 4, 3) and x.dtype == torch.float32
    assert m.tolist() == [[True, False, False, True], [True, True, False, False]]
    np.testing.assert_array_equal(
        x[0].numpy(), [embeddings[1, 0], [0] * 3, [0] * 3, embeddings[3, 1]]
    )
    np.testing.assert_array_equal(x[1, :2].numpy(), embeddings[0])
    assert torch.all(x[1, 2:] == 0)
    # a selection without a patch takes the image with a patch nearest in time (issue 19)
    empty = make_bag("c", 0, np.arange(4.0), embeddings.copy(), np.array([[1, 1], [0, 0]] * 2))
    x, m = collate([empty, empty], [np.array([1]), np.array([], dtype=np.int64)])
    assert m.tolist() == [[True, True], [True, True]]
    np.testing.assert_array_equal(x[0].numpy(), embeddings[0])  # 0 h and 2 h tie: the first
    np.testing.assert_array_equal(x[1].numpy(), embeddings[0])


# ----------------------------------------------------------------------------- TSS


def test_floor_mean_gap() -> None:
    assert floor_mean_gap(np.arange(0, 20, 2.0)) == 2  # regular 2 h
    assert floor_mean_gap(np.array([0.0, 1.0, 5.0, 6.5])) == 2  # irregular: 6.5 / 3 = 2.17
    assert floor_mean_gap(np.array([3.0, 4.0, 4.5, 6.9])) == 1  # 3.9 / 3 = 1.3, from t_0 = 3
    assert floor_mean_gap(np.array([5.0])) == 0  # single image


def test_interval_prior_from_training_sequences() -> None:
    times = [np.arange(0, 20, 2.0), np.arange(0, 40, 4.0), np.array([0.0, 1.0, 5.0, 6.5])]
    times += [np.arange(0, 10, 1.0), np.array([7.0])]  # the single image takes no part
    prior = fit_interval_prior(times)
    assert prior.candidates == (1, 2, 4)
    assert prior.sigma == pytest.approx(np.std([2, 4, 2, 1]))
    reference = fit_interval_prior(times, REFERENCE_CANDIDATES, REFERENCE_SIGMA)
    assert reference == IntervalPrior(tuple(range(1, 9)), pytest.approx(2.2913, abs=1e-4))
    with pytest.raises(ValueError):
        fit_interval_prior([np.array([1.0])])


def test_intervals_follow_the_restricted_normal() -> None:
    prior = IntervalPrior(candidates=(1, 2, 4), sigma=1.0)
    draws = draw_intervals(np.full(40_000, 2), prior, np.random.default_rng(0))
    p = np.exp(-0.5 * (np.array([1, 2, 4]) - 2.0) ** 2)
    frequencies = [np.mean(draws == c) for c in (1, 2, 4)]
    np.testing.assert_allclose(frequencies, p / p.sum(), atol=0.01)
    rng = np.random.default_rng(1)
    nearest = draw_intervals(np.array([0, 3, 5, 9]), IntervalPrior((1, 2, 4), 0.0), rng)
    assert nearest.tolist() == [1, 2, 4, 4]  # sigma 0: the nearest candidate, ties to the smaller


def test_windows_regular_and_irregular() -> None:
    assert window_ids(np.arange(0, 12, 2.0), 4).tolist() == [0, 0, 1, 1, 2, 2]
    irregular = np.array([3.0, 4.0, 8.0, 9.5, 10.0, 15.0])  # anchored at the first image, 3 h
    assert window_ids(irregular, 5).tolist() == [0, 0, 1, 1, 1, 2]


def test_snippets_take_one_to_all_images_of_every_window() -> None:
    windows = np.array([0, 0, 1, 1, 1, 3])
    rng = np.random.default_rng(0)
    sizes, picked = Counter(), Counter()
    for _ in range(3000):
        indices = sample_snippets(windows, rng)
        assert np.all(np.diff(indices) > 0)
        assert set(windows[indices]) == {0, 1, 3}
        sizes[int(np.sum(windows[indices] == 1))] += 1
        picked.update(indices.tolist())
    assert sorted(sizes) == [1, 2, 3]
    np.testing.assert_allclose([sizes[n] / 3000 for n in (1, 2, 3)], 1 / 3, atol=0.04)
    assert picked[5] == 3000  # a window of one image always keeps it
    # window 1: each of its images in (1/3)(1/3) + (1/3)(2/3) + (1/3)(1) = 2/3 of the samples
    np.testing.assert_allclose([picked[i] / 3000 for i in (2, 3, 4)], 2 / 3, atol=0.04)


def test_eq12_weight_by_hand() -> None:
    # A regular 2 h sequence of N = 10 images (mu = 2) sampled at T_e = 5.
    assert tss_weight(np.array([0.0, 2, 4, 8]), 10, 2, 5) == pytest.approx(0.4 + (8 / 3 - 2) / 3)
    assert tss_weight(np.array([0.0, 6, 10, 16]), 10, 2, 5) == pytest.approx(0.4 + 1.0)  # clipped
    assert tss_weight(np.array([0.0, 2]), 10, 2, 5) == pytest.approx(0.2)  # gap = mu: 0
    assert tss_weight(np.array([0.0, 2, 4]), 10, 2, 5, alpha1=0.5, alpha2=2.0) == pytest.approx(
        0.5 * 0.3
    )
    # One sampled image: no gap, the second term is 0 (the reference's 0/0 gives NaN).
    assert tss_weight(np.array([6.0]), 10, 2, 5) == pytest.approx(0.1)


def test_tss_sample_below_and_above_mu() -> None:
    times = np.arange(0, 20, 2.0)  # mu = 2
    rng = np.random.default_rng(3)
    assert tss_sample(times, 2, 2, rng) == (None, 1.0)  # T_e = mu: the full sequence
    assert tss_sample(times, 2, 1, rng) == (None, 1.0)  # T_e below mu
    for _ in range(50):
        indices, weight = tss_sample(times, 2, 6, rng, alpha1=1.0, alpha2=1.0)
        assert set(window_ids(times, 6)[indices]) == {0, 1, 2, 3}  # [0,6) [6,12) [12,18) [18,24)
        assert weight == pytest.approx(tss_weight(times[indices], 10, 2, 6))
        assert 0.4 <= weight <= 2.0
    single = np.array([30.0])  # a one-image sequence: mu 0, any T_e keeps the image, W = a1
    assert tss_sample(single, floor_mean_gap(single), 3, rng, alpha1=0.7)[1] == pytest.approx(0.7)


# ----------------------------------------------------------------------------- training


def batch_of(bags: list[Bag], rng: np.random.Generator) -> MiniBatch:
    """A mini-batch with TSS-like image subsets on some bags and unequal weights."""
    indices = [
        None
        if i % 2
        else np.sort(rng.choice(len(b.times), rng.integers(1, len(b.times) + 1), False))
        for i, b in enumerate(bags)
    ]
    return MiniBatch(bags, indices, rng.uniform(0.2, 2.0, size=len(bags)))


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", AGGREGATORS)
def test_batched_gradients_equal_per_bag_eq14(name: str, pack_path: None) -> None:
    rng = np.random.default_rng(4)
    bags = random_bags(rng, 7, dim=16)
    batch = batch_of(bags, rng)
    model = init_model(MILConfig(aggregator=name, k=3), 16, 3).double()
    loss, correct = batched_backward(model, batch)
    batched = gradients(model)
    model.zero_grad()
    loss_ref, correct_ref = per_bag_backward(model, batch)
    per_bag = gradients(model)
    assert loss == pytest.approx(loss_ref, abs=1e-12) and correct == correct_ref
    for key in batched:
        torch.testing.assert_close(batched[key], per_bag[key], rtol=0, atol=1e-6)
    # The comparison can fail: the same bags with the weights permuted give other gradients.
    model.zero_grad()
    per_bag_backward(model, MiniBatch(batch.bags, batch.indices, batch.weights[::-1].copy()))
    assert max((per_bag[k] - p.grad).abs().max() for k, p in model.named_parameters()) > 1e-4


def separable_bags(rng: np.random.Generator, n: int, dim: int = 16, k: int = 4) -> list[Bag]:
    """Three classes; only one patch in four per image carries the class (a shift on one dim)."""
    bags = []
    for i in range(n):
        label = i % 3
        t = int(rng.integers(4, 12))
        embeddings = rng.normal(size=(t, k, dim)).astype(np.float32)
        embeddings[:, 0, label] += 3.0
        times = np.cumsum(rng.choice([1.0, 2.0, 3.0], size=t))
        bags.append(make_bag(f"s{i}", label, times, embeddings, batch=f"line{label}/b{i % 2}"))
    return bags


def test_training_learns_separable_bags_and_is_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    train, test = separable_bags(rng, 60), separable_bags(rng, 30)
    config = MILConfig(k=4, epochs=25, lr=0.05, batch_bags=8, seed=1, tss_prior="fitted")
    seen = []

    def progress(stage: str, epoch: int, epochs: int | None, /, **numbers: float) -> None:
        seen.append({"stage": stage, "epoch": epoch, "of": epochs, **numbers})

    model, history = train_mil(train, ["a", "b", "c"], config, progress=progress)
    assert [s["epoch"] for s in seen] == list(range(1, 26)) and {s["of"] for s in seen} == {25}
    keys = ("epoch", "loss", "accuracy")
    assert [{k: e[k] for k in keys} for e in history["epochs"]] == [
        {k: s[k] for k in keys} for s in seen
    ]
    mus = [floor_mean_gap(b.times) for b in train]
    assert history["tss_candidates"] == sorted(set(mus)) and len(set(mus)) > 1
    assert history["tss_sigma"] == pytest.approx(np.std(mus))
    proba = predict_proba(model, test)
    labels = np.array([b.label for b in test])
    assert np.mean(proba.argmax(axis=1) == labels) >= 0.9
    curves = accuracy_by_fraction(lambda idx: predict_proba(model, test, idx), test)
    assert curves["natural"][1.0] == np.mean(proba.argmax(axis=1) == labels)
    again, _ = train_mil(train, ["a", "b", "c"], config)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    other, _ = train_mil(train, ["a", "b", "c"], MILConfig(**{**config.as_dict(), "seed": 2}))
    assert not torch.equal(model.classifier.weight, other.classifier.weight)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_model_file_round_trip(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    bags = separable_bags(rng, 12)
    prior = TSSPrior("fitted", candidates=(1, 2, 8), sigma=2.0)
    config = MILConfig(aggregator=name, k=4, epochs=1, tss_prior=prior)
    model, history = train_mil(bags, ["a", "b", "c"], config)
    split = make_split(bags, "batch-separated", 1)
    record = training_record(history)
    save_model(tmp_path / "m.pt", model, config, ["a", "b", "c"], split, "vit-s8:abc", record)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config == config and loaded.classes == ("a", "b", "c")
    assert loaded.training == record and 0 <= record["tss_subsampled_share"] <= 1
    assert MILConfig.from_dict(config.as_dict()) == config
    old = {**config.as_dict(), "tss_candidates": None, "tss_sigma": None}
    del old["tss_prior"]  # a model file written before TSSPrior: None meant fitted
    assert MILConfig.from_dict(old).tss_prior == TSSPrior("fitted")
    assert loaded.split == split and loaded.encoder_model_id == "vit-s8:abc"
    np.testing.assert_array_equal(predict_proba(loaded.model, bags), predict_proba(model, bags))
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"bad\.pt"):
        load_model(tmp_path / "bad.pt")


def test_training_rejects_mismatched_bags() -> None:
    bags = separable_bags(np.random.default_rng(7), 3)
    with pytest.raises(ValueError, match="k=10"):
        train_mil(bags, ["a", "b", "c"], MILConfig(epochs=1))
    with pytest.raises(ValueError, match="classes"):
        train_mil(bags, ["a", "b"], MILConfig(k=4, epochs=1))


# ----------------------------------------------------------------------------- splits


def split_sequences() -> list[Bag]:
    """Line L0 with batches b1, b2, b10; L1 with b1 only; L2 with b1, b2; positions B1, B10, B2."""
    one = np.zeros((1, 1, 2), dtype=np.float32)
    layout = {0: ("b1", "b2", "b10"), 1: ("b1",), 2: ("b1", "b2")}
    return [
        make_bag(f"L{line}/{b}/{pos}_{loc}", line, [0.0], one, batch=f"L{line}/{b}", position=pos)
        for line, batches in layout.items()
        for b in batches
        for pos in ("B1", "B10", "B2")
        for loc in (1, 2)
    ]


def test_batch_separated_split() -> None:
    sequences = split_sequences()
    by_key = {s.key: s for s in sequences}
    splits = make_splits(sequences, "batch-separated", repeats=3, seed=0)
    assert [s.repeat for s in splits] == [1, 2, 3]
    for split in splits:
        assert not set(split.train) & set(split.test)
        assert set(split.train) | set(split.test) == set(by_key)
        for line in (0, 1, 2):
            train_batches = {by_key[k].batch for k in split.train if by_key[k].label == line}
            test_batches = {by_key[k].batch for k in split.test if by_key[k].label == line}
            assert len(train_batches) == 1  # exactly one whole batch trains
            all_batches = {s.batch for s in sequences if s.label == line}
            assert test_batches == all_batches - train_batches
        assert not any(key.startswith("L1/") for key in split.test)  # single batch: train only
    chosen = {tuple(s.train) for s in make_splits(sequences, "batch-separated", 8)}
    assert len(chosen) > 1  # the repeats differ
    shuffled = [sequences[i] for i in np.random.default_rng(0).permutation(len(sequences))]
    assert make_split(shuffled, "batch-separated", 2) == splits[1]  # input order does not matter


def test_batch_stratified_split_never_confuses_b1_with_b10(tmp_path: Path) -> None:
    sequences = split_sequences()
    by_key = {s.key: s for s in sequences}
    confusable = 0
    for split in make_splits(sequences, "batch-stratified", repeats=3, seed=0):
        write_split(tmp_path / "split.json", split)
        assert read_split(tmp_path / "split.json") == split
        train, test = apply_split(sequences, read_split(tmp_path / "split.json"))
        assert {s.key for s in train} == set(split.train)
        assert not {s.key for s in train} & {s.key for s in test}
        for batch in {s.batch for s in sequences}:
            train_pos = {s.position for s in train if s.batch == batch}
            test_pos = {s.position for s in test if s.batch == batch}
            assert not train_pos & test_pos  # a position is never on both sides
            assert len(train_pos) == 2 and len(test_pos) == 1  # ceil(3 / 2) positions train
            confusable += "B1" in train_pos and "B10" in test_pos
        assert all(by_key[k].position in ("B1", "B10", "B2") for k in split.train)
    assert confusable > 0  # the case a substring match would get wrong did occur


def test_split_files_are_checked(tmp_path: Path) -> None:
    sequences = split_sequences()
    split = make_split(sequences, "batch-stratified", 1)
    record = split.as_dict()
    record["test"].append(record["train"][0])
    (tmp_path / "bad.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"bad\.json"):
        read_split(tmp_path / "bad.json")
    stale = Split(split.kind, 1, 0, (*split.train, "L9/b1/B1_1"), split.test)
    with pytest.raises(ValueError, match="not in the data"):
        apply_split(sequences, stale)
    with pytest.raises(ValueError, match="unknown split kind"):
        make_split(sequences, "random", 1)


# ----------------------------------------------------------------------------- metrics


def test_metrics_by_hand() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    proba = np.array(
        [[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]]
    )  # predicted: 0, 1, 1, 1, 0
    batches = ["A/1", "A/1", "B/1", "B/1", "C/1"]
    scores = evaluate(proba, labels, batches)
    assert scores["sequence_accuracy"] == pytest.approx(3 / 5)
    # F1 per class: 0: 2*1/(2+1+1) = 0.5; 1: 2*2/(4+1+0) = 0.8; 2: 0 -> macro 1.3 / 3
    assert scores["sequence_f1"] == pytest.approx(1.3 / 3)
    assert scores["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # batches: A mean (0.55, 0.35, 0.1) -> 0 right; B -> 1 right; C (0.5, 0.1, 0.4) -> 0 wrong
    keys, b_proba, b_labels = batch_proba(proba, labels, batches)
    assert keys == ["A/1", "B/1", "C/1"] and b_labels.tolist() == [0, 1, 2]
    np.testing.assert_allclose(b_proba[0], [0.55, 0.35, 0.1])
    assert scores["batch_accuracy"] == pytest.approx(2 / 3)
    # batch F1: 0: 2/(2+1+0) = 2/3; 1: 1; 2: 0 -> 5/9
    assert scores["batch_f1"] == pytest.approx(5 / 9)
    assert scores["batch_confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert macro_f1(np.array([0, 2]), np.array([0, 2])) == 1.0  # absent classes do not count
    assert confusion_matrix(np.array([2]), np.array([0]), 3)[2, 0] == 1
    with pytest.raises(ValueError, match="several labels"):
        batch_proba(proba, labels, ["A/1"] * 5)


def test_mean_std_over_repeats() -> None:
    repeats = [{"sequence_accuracy": a, "batch_accuracy": 1.0} for a in (0.5, 0.7, 0.9)]
    summary = mean_std(repeats, keys=("sequence_accuracy", "batch_accuracy"))
    assert summary["sequence_accuracy"] == pytest.approx((0.7, math.sqrt(0.08 / 3)))
    assert summary["batch_accuracy"] == (1.0, 0.0)


def test_accuracy_by_fraction_natural_and_reversed() -> None:
    assert fraction_indices(40, 0.01).tolist() == [0]
    assert fraction_indices(40, 0.25).tolist() == list(range(10))
    assert fraction_indices(40, 0.25, reverse=True).tolist() == list(range(30, 40))
    assert fraction_indices(3, 0.5).tolist() == [0, 1] and len(fraction_indices(3, 1.0)) == 3
    bags = [
        make_bag(f"s{i}", i % 2, np.arange(8.0), np.zeros((8, 1, 2), np.float32)) for i in range(4)
    ]

    def sees_first_image(indices: list[np.ndarray]) -> np.ndarray:
        """Right only when the first image is used (so: natural order, or the whole sequence)."""
        labels = np.array([b.label for b in bags])
        right = np.array([0 in idx for idx in indices])
        return np.eye(2)[np.where(right, labels, 1 - labels)]

    curves = accuracy_by_fraction(sees_first_image, bags)
    assert curves["natural"] == {f: 1.0 for f in (0.01, 0.25, 0.5, 0.75, 1.0)}
    assert curves["reversed"] == {0.01: 0.0, 0.25: 0.0, 0.5: 0.0, 0.75: 0.0, 1.0: 1.0}
