"""Removing filters: exactly what pruning computes, chosen three ways, scored end to end."""

import copy
import json

import pytest
import torch
import torchvision
from torch import nn

from convsight.analysis.compression import (
    filter_norms,
    filters_removed,
    random_filters,
    redundant_filters,
    removal_points,
    smallest_l1,
)
from convsight.analysis.filters import filter_redundancy
from convsight.errors import ConvsightError
from convsight.models import load_model
from convsight.studies.compression import ALL, plan_trials
from convsight.studies.mnist import MnistTrainingRequest, train_mnist
from convsight.train import evaluate
from tests.cli.test_cli import assert_bad_input, run


def _pruned(features: nn.Sequential, index: int, keep: list[int]) -> nn.Sequential:
    """A copy of a sequential conv stack with only the filters ``keep`` of conv
    ``features[index]``: its rows, the batch-norm entries that follow it, and the next conv's
    input columns (the next conv must exist)."""
    features = copy.deepcopy(features)
    conv = features[index]
    conv.weight = nn.Parameter(conv.weight[keep])
    conv.bias = nn.Parameter(conv.bias[keep])
    for later in list(features)[index + 1 :]:
        if isinstance(later, nn.BatchNorm2d):
            for name in ("weight", "bias"):
                setattr(later, name, nn.Parameter(getattr(later, name)[keep]))
            later.running_mean = later.running_mean[keep]
            later.running_var = later.running_var[keep]
        if isinstance(later, nn.Conv2d):
            later.weight = nn.Parameter(later.weight[:, keep])
            return features
    raise AssertionError("no conv after the pruned one")


def _trained_like(model):
    """Random, non-trivial weights and batch-norm statistics (an untrained net has BN at
    identity, which would hide a wrongly placed zero)."""
    torch.manual_seed(0)
    for m in model.module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -1, 1)
    return model.module.eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    "seed, options, layer, index",
    [
        ("mnist-cnn", {}, "features.0", 0),
        ("five-class-cnn", {"image_size": 32}, "features.4", 4),
    ],
)
def test_removal_equals_pruning_the_filter_away(seed, options, layer, index):
    model = load_model(seed, **options)
    module = _trained_like(model)
    removed = [1, 5, 6]
    keep = [c for c in range(module.features[index].out_channels) if c not in removed]
    x = torch.randn(3, *model.example_input().shape[1:])
    with torch.no_grad():
        expected = module.classifier(_pruned(module.features, index, keep)(x))
        with filters_removed(module, {layer: removed}, model.example_input()):
            got = module(x)
        whole = module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(whole, expected, atol=1e-3)  # the removal changed something
    assert all(not m._forward_hooks for m in module.modules())  # hooks gone after the block


@pytest.mark.slow
def test_removal_of_the_last_conv_drops_its_columns_of_the_dense_layer():
    model = load_model("five-class-cnn", image_size=32)
    module = _trained_like(model)
    removed = [0, 7, 100]
    keep = [c for c in range(128) if c not in removed]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = module.features(x)  # each channel computed on its own through ReLU, BN, pool
        spatial = maps.shape[2] * maps.shape[3]
        columns = torch.cat([torch.arange(c * spatial, (c + 1) * spatial) for c in keep])
        dense = module.classifier[1]  # the pruned dense layer: the kept channels' columns
        hidden = nn.functional.linear(
            maps[:, keep].flatten(1), dense.weight[:, columns], dense.bias
        )
        expected = module.classifier[2:](hidden)
        with filters_removed(module, {"features.12": removed}, model.example_input()):
            got = module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_zeroing_the_conv_output_would_not_be_removal():
    """Batch norm after the ReLU turns a zero channel into a constant, so the zero goes after
    the norm and the pooling, where the next conv reads the channel."""
    model = load_model("five-class-cnn", image_size=32)
    module = _trained_like(model)
    found = removal_points(module, ["features.0", "features.12"], model.example_input())
    assert found == {"features.0": "features.3", "features.12": "features.15"}
    mnist = load_model("mnist-cnn")
    assert removal_points(mnist.module, ["features.3"], mnist.example_input()) == {
        "features.3": "features.5"
    }


@pytest.mark.slow
def test_removal_refuses_a_residual_block():
    module = torchvision.models.resnet18(weights=None).eval()
    example = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ConvsightError, match="sequential blocks"):
        removal_points(module, ["layer1.0.conv2"], example)
    with pytest.raises(ConvsightError, match="not a Conv2d"):
        removal_points(module, ["layer1.0.bn1"], example)
    # conv1 -> bn1 -> relu -> conv2 is sequential, but that relu module also runs after the sum
    with pytest.raises(ConvsightError, match="'layer1.0.relu' after 'layer1.0.conv1' runs 2"):
        removal_points(module, ["layer1.0.conv1"], example)


@pytest.mark.slow
def test_removed_filters_get_no_gradient():
    model = load_model("mnist-cnn")
    module = model.module.train().requires_grad_(True)
    with filters_removed(module, {"features.0": [3]}, model.example_input()):
        module(torch.randn(4, 1, 28, 28)).sum().backward()
    grad = module.features[0].weight.grad
    assert grad[3].abs().max() == 0 and grad[2].abs().max() > 0


def _conv_with(filters: torch.Tensor) -> nn.Module:
    conv = nn.Conv2d(3, len(filters), 3, bias=False)
    conv.weight.data = filters
    return nn.Sequential(conv)


def test_near_copies_keep_the_largest_filter_of_each_group():
    torch.manual_seed(0)
    base = torch.randn(3, 3, 3)
    other = torch.randn(3, 3, 3)
    filters = torch.stack(
        [
            0.5 * torch.rot90(base, 1, (1, 2)),  # a rotated, weaker copy of filter 2
            other,
            2.0 * base,
            base[[2, 0, 1]].flip(-1),  # colours reordered and flipped
            0.1 * other.flip(-2),  # a faint flipped copy of filter 1
        ]
    )
    module = _conv_with(filters)
    redundancy = filter_redundancy(module, "0")
    norms = filter_norms(module, "0")
    assert redundancy.groups(0.999) == [[0, 2, 3], [1, 4]]
    assert redundant_filters(redundancy, norms, 0.999) == [0, 3, 4]
    assert smallest_l1(norms, 2) == [0, 4]
    assert random_filters(5, 3, seed=7) == random_filters(5, 3, seed=7)
    assert len(set(random_filters(5, 3, seed=7))) == 3


def test_trials_remove_as_many_filters_each_way_and_merge_equal_thresholds():
    torch.manual_seed(0)
    module = load_model("mnist-cnn").module
    layers = ["features.0", "features.3"]
    redundancy = {layer: filter_redundancy(module, layer) for layer in layers}
    # two layers whose similarity is made by hand: 0.7 for pairs of filters in layer 0, and
    # one pair at 0.62 in layer 3 (so 0.6 removes from both layers, 0.65 from layer 0 only)
    sim = torch.eye(32)
    sim[0, 1] = sim[1, 0] = sim[2, 3] = sim[3, 2] = 0.7
    redundancy["features.0"].similarity = sim
    sim = torch.eye(64)
    sim[10, 11] = sim[11, 10] = 0.62
    redundancy["features.3"].similarity = sim
    norms = {layer: filter_norms(module, layer) for layer in layers}
    trials = plan_trials(layers, redundancy, norms, [0.9, 0.6, 0.65, 0.66], repeats=2, seed=0)
    # 0.9 removes nothing; 0.66, 0.65 and 0.6 remove the same two filters of layer 0: one point
    # with the three thresholds; 0.6 removes one of layer 3. All layers at once: only where two
    # layers lose filters (otherwise it is the one layer's removal again)
    points = {(t.scope, tuple(t.thresholds)) for t in trials}
    assert points == {
        ("features.0", (0.66, 0.65, 0.6)),
        ("features.3", (0.6,)),
        (ALL, (0.6,)),
    }
    for scope, thresholds in points:
        chosen = [t for t in trials if (t.scope, tuple(t.thresholds)) == (scope, thresholds)]
        assert sorted((t.strategy, t.repeat) for t in chosen) == [
            ("l1", 0),
            ("random", 0),
            ("random", 1),
            ("redundant", 0),
        ]
        counts = {tuple(sorted((k, len(v)) for k, v in t.removed.items())) for t in chosen}
        assert len(counts) == 1  # every strategy removes as many filters from each layer
        assert all(t.kept == t.total - sum(len(v) for v in t.removed.values()) for t in chosen)
    everything = next(t for t in trials if t.scope == ALL and t.strategy == "redundant")
    assert {k: len(v) for k, v in everything.removed.items()} == {"features.0": 2, "features.3": 1}
    assert len(set(everything.removed["features.0"]) & {0, 1}) == 1  # one of each pair goes
    assert len(set(everything.removed["features.3"]) & {10, 11}) == 1


@pytest.fixture(scope="module")
def mnist_model(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("mnist")
    train_mnist(
        MnistTrainingRequest(
            out, epochs=1, train_limit=3000, data_dir=mnist_dir, show_progress=False
        )
    )
    return out / "model.pt"


@pytest.mark.slow
def test_compress_command_scores_every_removal(mnist_model, mnist_dir, tmp_path):
    out = tmp_path / "out"
    result = run(
        "compress", mnist_model, "--data", mnist_dir, "--thresholds", "0.7,0.6",
        "--random-repeats", "2", "--finetune-images", "300", "--test-images", "2000",
        "--out", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "compression.json").read_text())
    model = load_model(str(mnist_model))
    from convsight.data import mnist_loaders

    _, test = mnist_loaders(model.card, mnist_dir, test_limit=2000)
    assert saved["baseline_accuracy"] == evaluate(model.module, test)[1]
    assert saved["data"] == "MNIST test set (2000 images)"
    assert saved["settings"]["finetune_images"] == 300
    assert {t["scope"] for t in saved["trials"]} <= {"features.0", "features.3", ALL}
    redundant = [t for t in saved["trials"] if t["strategy"] == "redundant"]
    assert redundant, "no threshold removed a filter"
    for t in redundant:
        for layer, removed in t["removed"].items():
            groups = saved["layers"][layer]["groups"][str(min(t["thresholds"]))]
            assert len(removed) == saved["layers"][layer]["filters"] - groups
    # one removal scored again by hand: the JSON's accuracy is what the pruned network gets
    t = saved["trials"][0]
    with filters_removed(model.module, t["removed"], model.example_input()):
        assert evaluate(model.module, test)[1] == t["accuracy"]
    assert all(0 <= t["finetuned"] <= 1 for t in saved["trials"])
    assert (out / "compression.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--thresholds", "0.9,1.5"], "--thresholds must be in (0, 1]"),
        (["--thresholds", "x"], "comma-separated"),
        (["--random-repeats", "0"], "--random-repeats"),
    ],
)
def test_compress_bad_flags_exit_2(mnist_model, mnist_dir, tmp_path, args, fragment):
    out = tmp_path / "out"
    result = run("compress", mnist_model, "--data", mnist_dir, "--out", out, *args)
    assert_bad_input(result, fragment)
    assert not out.exists()


@pytest.mark.slow
def test_compress_refuses_data_that_is_not_the_models(tmp_path, mnist_dir):
    out = tmp_path / "out"
    assert_bad_input(
        run("compress", "five-class-cnn", "--data", mnist_dir, "--out", out), "not an MNIST model"
    )
    assert_bad_input(
        run("compress", "mnist-cnn", "--data", tmp_path / "nope", "--out", out), "nope"
    )
    assert not out.exists()


@pytest.mark.slow
def test_compress_returns_its_result_and_checks_the_request_when_made(
    mnist_model, mnist_dir, tmp_path
):
    from convsight.studies.compression import CompressionRequest, CompressionResult, compress

    with pytest.raises(ConvsightError, match="--thresholds"):
        CompressionRequest(mnist_dir, thresholds=[1.5])
    request = CompressionRequest(
        mnist_dir, tmp_path / "out", thresholds=[0.6], random_repeats=1, finetune_images=0,
        test_images=300, show_progress=False,
    )  # fmt: skip
    result = compress(load_model(str(mnist_model)), request)
    assert isinstance(result, CompressionResult) and result.settings["test_images"] == 300
    saved = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert saved == json.loads(json.dumps(result.to_json()))
    assert [p.name for p in result.files] == ["compression.json", "compression.png"]


@pytest.mark.slow
def test_compression_without_a_folder_writes_nothing_and_saves_what_a_run_writes(
    mnist_dir, tmp_path, monkeypatch
):
    from convsight.models import Model, build_seed
    from convsight.report import OUT_MARKER
    from convsight.studies.compression import CompressionRequest, compress
    from tests.studies.views import assert_shows, names_and_bytes

    torch.manual_seed(0)
    model = Model(*build_seed("mnist-cnn", {}))
    fields = dict(
        thresholds=[0.3], random_repeats=1, finetune_images=0, test_images=64, show_progress=False
    )
    monkeypatch.chdir(tmp_path)  # where the default folder would be
    result = compress(model, CompressionRequest(mnist_dir, None, **fields))
    assert list(tmp_path.iterdir()) == [] and result.files == [] and result.trials
    assert result.save(tmp_path / "saved") == result.files
    compress(model, CompressionRequest(mnist_dir, tmp_path / "ran", **fields))
    mine, theirs = names_and_bytes(tmp_path / "saved"), names_and_bytes(tmp_path / "ran")
    assert set(mine) == set(theirs) == {"compression.json", "compression.png", OUT_MARKER}
    assert mine["compression.png"] == theirs["compression.png"]
    untimed = [json.loads(files["compression.json"]) for files in (mine, theirs)]
    for data in untimed:
        data.pop("seconds")
    assert untimed[0] == untimed[1]
    assert_shows(result, ["accuracy against filters kept"])
    facts = dict(result.facts())
    assert facts["model"] == "mnist-cnn" and facts["removals scored"] == len(result.trials)
    assert facts["accuracy, all filters"] == f"{result.baseline_accuracy:.4f}"


def _photo_subset(root, samples, bad_train: bool = False):
    """A subset folder of sample photos: classes a and b, 4 train and 2 test photos each;
    ``bad_train``: b's training files are text named .jpg."""
    for c, name in enumerate(("a", "b")):
        photos = samples[6 * c : 6 * c + 6]
        for split, chosen in (("train", photos[:4]), ("test", photos[4:])):
            (root / split / name).mkdir(parents=True)
            for photo in chosen:
                target = root / split / name / photo.name
                if bad_train and split == "train" and name == "b":
                    target.write_text("not a photo")
                else:
                    target.write_bytes(photo.read_bytes())
    return root


def _photo_model():
    from convsight.models import Model, ModelCard
    from tests.conftest import TinyNet

    torch.manual_seed(0)
    card = ModelCard(
        name="tiny", arch="test:tiny", input_size=(32, 32), channels=3,
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), labels=["a", "b"],
    )  # fmt: skip
    return Model(TinyNet(2), card)


def _held_folder_data(model, data, batch_size, images, seed):
    """The in-memory reading the compression test had: both splits decoded and held."""
    from convsight.data.folder import FolderData
    from convsight.studies.five_class import folder_loader, load_splits, subset_classes

    classes = subset_classes(data)
    train, test = load_splits(data, model.card, classes, show_progress=False)
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed))
    pick = pick[: max(images, 1)]
    train = FolderData(train.pixels[pick], train.labels[pick], classes, [])

    def make_train():
        return folder_loader(train, model.card, batch_size, True, seed)

    return folder_loader(test, model.card, batch_size, False, seed), make_train, "held"


def _decodes(monkeypatch):
    import convsight.data.folder as folder_module

    decoded = []
    real = folder_module.load_image
    monkeypatch.setattr(folder_module, "load_image", lambda p: decoded.append(p) or real(p))
    return decoded


def test_subset_folder_is_read_a_batch_at_a_time(tmp_path, samples, monkeypatch):
    from convsight.studies.compression import compression_data

    decoded = _decodes(monkeypatch)
    data = compression_data(_photo_model(), _photo_subset(tmp_path, samples), 3, 5, seed=1)
    assert decoded == [] and data.finetune_images == 5 and "(4 images)" in data.name
    x, y = next(iter(data.test))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 0, 1] and len(decoded) == 3
    next(iter(data.train()))
    assert len(decoded) == 6  # one training batch more, nothing else


def test_subset_folder_batches_and_scores_equal_the_held_data(tmp_path, samples, monkeypatch):
    from convsight.studies import compression
    from convsight.studies.compression import CompressionRequest, compress, compression_data

    model, folder = _photo_model(), _photo_subset(tmp_path, samples)
    streamed = compression_data(model, folder, 3, 5, seed=1)
    test, make_train, _ = _held_folder_data(model, folder, 3, 5, 1)
    for ours, held in ((streamed.test, test), (streamed.train(), make_train())):
        pairs = list(zip(ours, held, strict=True))
        assert len(pairs) == 2
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)
    request = CompressionRequest(
        folder, None, thresholds=[0.5], random_repeats=1, finetune_images=5, batch_size=3,
        seed=1, device="cpu", show_progress=False,
    )  # fmt: skip
    ours = compress(model, request).to_json()
    monkeypatch.setattr(compression, "_folder_data", _held_folder_data)
    held = compress(model, request).to_json()
    assert ours["trials"] and {**ours, "seconds": 0} == {**held, "seconds": 0, "data": ours["data"]}


def test_subset_class_without_a_readable_training_image_fails_before_decoding(
    tmp_path, samples, monkeypatch
):
    from convsight.studies.compression import check_compression

    decoded = _decodes(monkeypatch)
    with pytest.raises(ConvsightError, match="class\\(es\\) b have no readable training image"):
        check_compression(_photo_model(), _photo_subset(tmp_path, samples, bad_train=True))
    assert decoded == []
