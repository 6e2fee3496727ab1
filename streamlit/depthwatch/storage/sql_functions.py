"""SQL functions that read the packed log (schema 4) in plain psql.

`book_chunks` holds the book event log packed (storage/codec.py: LEB128
varints laid out by column). These PL/pgSQL functions decode it inside the
database, so an analyst needs no Python, only psql:

    SET TIME ZONE 'UTC';
    SELECT * FROM depthwatch_tops('BTCUSDT', '2026-11-24 10:00Z', '2026-11-24 11:00Z');
    SELECT * FROM depthwatch_book_updates('BTCUSDT', '2026-11-24 10:00Z',
                                          '2026-11-24 10:05Z', depth => 50);

(`depth` and `category` are needed only when the symbol has several.)

Interfaces (the names and column lists are kept stable):

- `depthwatch_varints(payload)`: every varint of a payload, as bigint[].
- `depthwatch_chunk_messages(stream_id, chunk_ts_us, chunk_u, payload)`: one
  row per message with the top of book after it (carried from the last
  message that changed it; NULL before the chunk's first top and for an
  empty side), and `top_changed` where that message changed it. The row's
  `ts_us` and `u` are passed as `chunk_ts_us` and
  `chunk_u`: PL/pgSQL refuses an argument named like an output column.
- `depthwatch_chunk_levels(chunk_ts_us, chunk_u, payload)`: one row per
  level, a message's bids before its asks, in stored order.
- `depthwatch_chunk_tops(chunk_ts_us, chunk_u, payload)`: the messages that
  changed the top of book, with the top after them (chunk_messages filtered).
- `depthwatch_chunk_level_rows(chunk_ts_us, chunk_u, payload)`: chunk_levels
  plus `pos`, a level's place in its message (what book_updates reads).
- `depthwatch_chunk_skim(payload)`: a chunk's values without its levels.
- `depthwatch_stream_id(symbol, depth, category)`: the `streams.id` of a
  symbol, or an exception that says what is recorded.
- `depthwatch_book_updates(symbol, from, to, depth, category)`: Tardis
  incremental_book_L2-like rows for exchange times in [from, to), from the
  chunks and the legacy `book_events` table, repeats dropped.
- `depthwatch_tops(symbol, from, to, depth, category)`: top-of-book ticks in
  [from, to), from the chunks and the legacy `quotes` table.

Every statement is idempotent (CREATE OR REPLACE), runs through
`sa.text` as the migrations do, and needs the schema 4 tables to exist.
The texts are put together from Python pieces so that each step of the
decoding is written once: the forward varint loop, a message's columns, a
side's levels or top, and the frames of the three kinds of function (of a
payload, of a chunk row, of a symbol and a time range).

Speed notes (measured on PostgreSQL 18, see tests/test_sql_functions.py):

- The payload is copied into a local variable once (`payload || ''`): a
  compressed or out-of-line (TOASTed) argument would otherwise be detoasted
  by every `get_byte` call, which is quadratic.
- `array_append` onto a PL/pgSQL variable extends the array in place; it
  measured faster than preallocating with array_fill and assigning by
  subscript.
- Message rows and tops do not need the level columns (most of a chunk's
  bytes), so `depthwatch_chunk_skim` decodes the header and message columns
  forwards and the tops columns *backwards* from the end of the payload
  (a varint's last byte is the only one below 0x80, so varints can be read
  in reverse), never touching the level bytes.

Why one file of ~600 lines: it is the third decoder of codec.py's layout
(beside the NumPy encoder and decoder), SQL text built from shared pieces;
checked against codec.py line by line, it is best read whole.
"""

from __future__ import annotations

import textwrap

# unzigzag(z) in SQL: (z >> 1) # -(z & 1)  (`#` is bigint XOR).


def _indented(sql: str, spaces: int) -> str:
    return textwrap.indent(sql, " " * spaces)


# What _forward_varints reads and writes, declared first.
_FORWARD_VARIABLES = """\
    -- A plain copy: get_byte on a TOASTed argument would detoast it per call.
    p bytea := payload || ''::bytea;
    out bigint[] := '{}';
    b integer;
    acc bigint := 0;
    shift integer := 0;
"""


def _forward_varints(last: str, on_value: str = "", on_more: str = "") -> str:
    """The forward read of `p`'s bytes 0 .. `last` (_FORWARD_VARIABLES
    declared), each varint appended to `out` as it ends; `on_value` runs after
    each value, `on_more` after each byte that has more to come (both written
    unindented)."""
    return f"""    FOR i IN 0 .. {last} LOOP
        b := get_byte(p, i);
        IF b < 128 THEN
            IF shift = 0 THEN
                out := array_append(out, b::bigint);
            ELSE
                out := array_append(out, acc | (b::bigint << shift));
                acc := 0;
                shift := 0;
            END IF;
{_indented(on_value, 12)}        ELSE
            acc := acc | ((b & 127)::bigint << shift);
            shift := shift + 7;
{_indented(on_more, 12)}        END IF;
    END LOOP;
"""


def _payload_reader(*, name: str, body: str) -> str:
    """A function of a chunk payload returning varints of it as bigint[]:
    `body`, the text after DECLARE's _FORWARD_VARIABLES (more variables, then
    BEGIN ... END)."""
    return f"""
CREATE OR REPLACE FUNCTION {name}(payload bytea)
RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
DECLARE
{_FORWARD_VARIABLES}{body}$fn$
"""


# After each byte of a varint with more to come.
_AT_MOST_64_BITS = """IF shift > 63 THEN
    RAISE EXCEPTION 'depthwatch: a varint longer than 64 bits at byte %', i;
END IF;
"""

VARINTS = _payload_reader(
    name="depthwatch_varints",
    body=f"""\
BEGIN
{_forward_varints("length(p) - 1", on_more=_AT_MOST_64_BITS)}    IF shift <> 0 THEN
        RAISE EXCEPTION 'depthwatch: the payload ends inside a varint';
    END IF;
    RETURN out;
END
""",
)

# After each value: count it; once the header's 7 are in, read on to the end
# of the message columns (a known format with messages), else stop there.
_HEADER_THEN_MESSAGES = """k := k + 1;
IF k = target THEN
    IF k = 7 AND out[1] IN (1, 2) AND out[2] > 0 THEN
        target := 7 + 8 * out[2]::integer;
    ELSE
        head_end := i;
        EXIT;
    END IF;
END IF;
"""

# Header (7 values), message columns (8 x n) and tops (4 x n_tops) of a chunk,
# in that order: the level columns in between are skipped. The header alone
# when the format is unknown (callers check v[1]: 1, times in microseconds;
# 2, ts and match in milliseconds).
CHUNK_SKIM = _payload_reader(
    name="depthwatch_chunk_skim",
    body=f"""\
    len integer := length(p);
    tail bigint[] := '{{}}';
    k integer := 0;
    target integer := 7;
    head_end integer := -1;
    j integer;
    need integer;
BEGIN
    -- Forwards: the header, then (its n known) the 8 message columns.
{_forward_varints("len - 1", on_value=_HEADER_THEN_MESSAGES)}    IF head_end < 0 THEN
        RAISE EXCEPTION 'depthwatch: chunk payload truncated (% of % header and message values)',
            k, target;
    END IF;
    IF out[1] NOT IN (1, 2) THEN
        RETURN out;
    END IF;
    -- Backwards from the end: the 4 x n_tops top values. A varint's last
    -- byte is below 0x80 and holds its highest 7 bits.
    need := 4 * out[7]::integer;
    j := len - 1;
    FOR q IN 1 .. need LOOP
        IF j <= head_end THEN
            RAISE EXCEPTION 'depthwatch: chunk payload too short for its % top values', need;
        END IF;
        acc := get_byte(p, j);
        IF acc >= 128 THEN
            RAISE EXCEPTION 'depthwatch: the payload ends inside a varint';
        END IF;
        j := j - 1;
        LOOP
            EXIT WHEN j <= head_end;
            b := get_byte(p, j);
            EXIT WHEN b < 128;
            acc := (acc << 7) | (b & 127);
            j := j - 1;
        END LOOP;
        tail := array_append(tail, acc);
    END LOOP;
    -- What is left between the two is the level columns: 2 x n_levels values,
    -- at least a byte each, and nothing at all without levels.
    IF (out[6] = 0 AND j <> head_end) OR j - head_end < 2 * out[6] THEN
        RAISE EXCEPTION 'depthwatch: chunk payload does not hold its % levels', out[6];
    END IF;
    FOR q IN REVERSE need .. 1 LOOP
        out := array_append(out, tail[q]);
    END LOOP;
    RETURN out;
END
""",
)


# The variables _message_loop reads (declared after `v`, the chunk's values):
# the message count, the time unit, the scales and the message columns' offsets.
_MESSAGE_VARIABLES = """\
    n integer := v[2];
    unit bigint := CASE WHEN v[1] = 2 THEN 1000 ELSE 1 END;
    pscale numeric;
    sscale numeric;
    c_local integer := 7 + n;
    c_u integer := 7 + 3 * n;
    c_seq integer := 7 + 4 * n;
    c_flags integer := 7 + 5 * n;
    z bigint;
"""


def _message_loop(match_us: str = "") -> str:
    """The start of the loop over a chunk's messages, after the header checks
    (_MESSAGE_VARIABLES declared): the scales, then per message msg, ts_us,
    local_us, `match_us` (code setting it, unindented, or nothing), u and
    seq. The caller goes on inside the loop and closes it."""
    return f"""    pscale := ('1e-' || v[3])::numeric;
    sscale := ('1e-' || v[4])::numeric;
    ts_us := chunk_ts_us;
    u := chunk_u - 1;
    seq := v[5];
    FOR i IN 1 .. n LOOP
        msg := i - 1;
        z := v[7 + i];
        ts_us := ts_us + unit * ((z >> 1) # -(z & 1));
        z := v[c_local + i];
        local_us := ts_us + ((z >> 1) # -(z & 1));
{_indented(match_us, 8)}        z := v[c_u + i];
        u := u + 1 + ((z >> 1) # -(z & 1));
        z := v[c_seq + i];
        seq := seq + ((z >> 1) # -(z & 1));
"""


def _top_deltas(*totals: str) -> str:
    """Each of `totals` (running tick or lot counts) moved by the next top
    value, v[t + 1] onwards."""
    return "".join(
        f"z := v[t + {k}];\n{total} := {total} + ((z >> 1) # -(z & 1));\n"
        for k, total in enumerate(totals, 1)
    )


def _top_side(side: str, ticks: str, lots: str) -> str:
    """One side's best price and size from its running ticks and lots: NULL
    for an empty side (0 ticks), a size of 0 as 0."""
    return f"""IF {ticks} = 0 THEN
    {side}_price := NULL;
    {side}_size := NULL;
ELSE
    {side}_price := {ticks} * pscale;
    {side}_size := CASE WHEN {lots} = 0 THEN 0 ELSE {lots} * sscale END;
END IF;
"""


# Message i's match time: 0 for none, else 1 + zigzag((ts - match) / unit).
_MATCH_US = """z := v[c_match + i];
IF z = 0 THEN
    match_us := NULL;
ELSE
    z := z - 1;
    match_us := ts_us - unit * ((z >> 1) # -(z & 1));
END IF;
"""


CHUNK_MESSAGES = f"""
CREATE OR REPLACE FUNCTION depthwatch_chunk_messages(
    stream_id integer, chunk_ts_us bigint, chunk_u bigint, payload bytea)
RETURNS TABLE(
    msg integer, ts_us bigint, local_us bigint, match_us bigint, u bigint, seq bigint,
    is_snapshot boolean, bid_price numeric, bid_size numeric, ask_price numeric,
    ask_size numeric, top_changed boolean)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE ROWS 50 AS $fn$
DECLARE
    v bigint[] := depthwatch_chunk_skim(payload);
{_MESSAGE_VARIABLES}    c_match integer := 7 + 2 * n;
    t integer := 7 + 8 * n;
    flags integer;
    tb bigint := 0;
    tbs bigint := 0;
    ta bigint := 0;
    tas bigint := 0;
BEGIN
    IF v[1] NOT IN (1, 2) THEN
        RAISE EXCEPTION 'depthwatch: chunk (stream %, ts_us %, u %) has unknown format %',
            stream_id, chunk_ts_us, chunk_u, v[1];
    END IF;
{_message_loop(match_us=_MATCH_US)}        flags := v[c_flags + i];
        is_snapshot := (flags & 1) <> 0;
        top_changed := (flags & 2) <> 0;
        IF top_changed THEN
{_indented(_top_deltas("tb", "tbs", "ta", "tas"), 12)}            t := t + 4;
{_indented(_top_side("bid", "tb", "tbs") + _top_side("ask", "ta", "tas"), 12)}        END IF;
        RETURN NEXT;
    END LOOP;
END
$fn$
"""


def _chunk_reader(*, name: str, columns: str, language: str, body: str) -> str:
    """A function of one book_chunks row (chunk_ts_us, chunk_u, payload) whose
    rows open with their message's msg, ts_us, local_us, u, seq and
    is_snapshot, then `columns`; `language`, the LANGUAGE clause after the
    word; `body`, the text between the $fn$ quotes."""
    return f"""
CREATE OR REPLACE FUNCTION {name}(
    chunk_ts_us bigint, chunk_u bigint, payload bytea)
RETURNS TABLE(
    msg integer, ts_us bigint, local_us bigint, u bigint, seq bigint, is_snapshot boolean,
    {columns})
LANGUAGE {language} AS $fn$
{body}$fn$
"""


# The messages that changed the top, read off chunk_messages (the stream id
# only names a chunk in its errors).
CHUNK_TOPS = _chunk_reader(
    name="depthwatch_chunk_tops",
    columns="bid_price numeric, bid_size numeric, ask_price numeric, ask_size numeric",
    language="sql IMMUTABLE STRICT PARALLEL SAFE ROWS 20",
    body="""    SELECT m.msg, m.ts_us, m.local_us, m.u, m.seq, m.is_snapshot,
           m.bid_price, m.bid_size, m.ask_price, m.ask_size
    FROM depthwatch_chunk_messages(0, chunk_ts_us, chunk_u, payload) m
    WHERE m.top_changed
""",
)


def _side_levels(ticks: str, count: str) -> str:
    """A row per level of one side of message i (`count`: the column of its
    level counts; `ticks`: the side's running price), `pos` counting on."""
    return f"""FOR j IN 1 .. v[{count} + i] LOOP
    lv := lv + 1;
    pos := pos + 1;
    z := v[lv];
    {ticks} := {ticks} + ((z >> 1) # -(z & 1));
    price := CASE WHEN {ticks} = 0 THEN 0 ELSE {ticks} * pscale END;
    s := v[lv + n_levels];
    amount := CASE WHEN s = 0 THEN 0 ELSE s * sscale END;
    RETURN NEXT;
END LOOP;
"""


# `pos` numbers a level within its message (bids 1..nb, then asks), the key
# that tells the same level in two chunks (an ordinality over a chunk's rows
# would differ between two chunks that start at different messages).
CHUNK_LEVEL_ROWS = _chunk_reader(
    name="depthwatch_chunk_level_rows",
    columns="side text, pos integer, price numeric, amount numeric",
    language="plpgsql IMMUTABLE STRICT PARALLEL SAFE ROWS 300",
    body=f"""DECLARE
    v bigint[] := depthwatch_varints(payload);
{_MESSAGE_VARIABLES}    n_levels integer := v[6];
    c_nb integer := 7 + 6 * n;
    c_na integer := 7 + 7 * n;
    lv integer := 7 + 8 * n;
    s bigint;
    bid bigint := 0;
    ask bigint := 0;
BEGIN
    IF v[1] NOT IN (1, 2) THEN
        RAISE EXCEPTION 'depthwatch: chunk (ts_us %, u %) has unknown format %',
            chunk_ts_us, chunk_u, v[1];
    END IF;
    IF cardinality(v) <> 7 + 8 * n + 2 * n_levels + 4 * v[7] THEN
        RAISE EXCEPTION 'depthwatch: chunk (ts_us %, u %) has % values, its header says %',
            chunk_ts_us, chunk_u, cardinality(v), 7 + 8 * n + 2 * n_levels + 4 * v[7];
    END IF;
{_message_loop()}        is_snapshot := (v[c_flags + i] & 1) <> 0;
        side := 'bid';
        pos := 0;
{_indented(_side_levels("bid", "c_nb"), 8)}        side := 'ask';
{_indented(_side_levels("ask", "c_na"), 8)}    END LOOP;
END
""",
)

# Not STRICT, so that the planner inlines it into the calling query (the
# PL/pgSQL function it reads is strict).
CHUNK_LEVELS = _chunk_reader(
    name="depthwatch_chunk_levels",
    columns="side text, price numeric, amount numeric",
    language="sql IMMUTABLE PARALLEL SAFE ROWS 300",
    body="""\
    SELECT l.msg, l.ts_us, l.local_us, l.u, l.seq, l.is_snapshot, l.side, l.price, l.amount
      FROM depthwatch_chunk_level_rows(chunk_ts_us, chunk_u, payload) AS l
""",
)

# Which streams.id a symbol names; exceptions say what is recorded instead.
STREAM_ID = """
CREATE OR REPLACE FUNCTION depthwatch_stream_id(
    symbol text, depth integer DEFAULT NULL, category text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    ids integer[];
    categories text[];
    depths integer[];
    known text;
BEGIN
    IF symbol IS NULL OR symbol = '' THEN
        RAISE EXCEPTION 'depthwatch: a symbol is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT array_agg(s.id ORDER BY i.category, s.depth),
           array_agg(DISTINCT i.category ORDER BY i.category),
           array_agg(DISTINCT s.depth::integer ORDER BY s.depth::integer)
      INTO ids, categories, depths
      FROM instruments i
      JOIN streams s ON s.instrument_id = i.id
     WHERE upper(i.symbol) = upper(depthwatch_stream_id.symbol)
       AND (depthwatch_stream_id.category IS NULL
            OR lower(i.category) = lower(depthwatch_stream_id.category))
       AND (depthwatch_stream_id.depth IS NULL OR s.depth = depthwatch_stream_id.depth);
    IF cardinality(ids) = 1 THEN
        RETURN ids[1];
    END IF;
    IF ids IS NULL THEN
        -- Say what there is instead.
        SELECT string_agg(DISTINCT i.symbol, ', ' ORDER BY i.symbol) INTO known
          FROM instruments i JOIN streams s ON s.instrument_id = i.id;
        IF NOT EXISTS (SELECT 1 FROM instruments i JOIN streams s ON s.instrument_id = i.id
                        WHERE upper(i.symbol) = upper(depthwatch_stream_id.symbol)) THEN
            RAISE EXCEPTION 'depthwatch: no order book of symbol % has been recorded',
                quote_literal(symbol)
                USING ERRCODE = 'no_data_found',
                      HINT = 'recorded symbols: ' || coalesce(known, 'none');
        END IF;
        SELECT string_agg(format('%s depth %s', i.category, s.depth), ', '
                          ORDER BY i.category, s.depth) INTO known
          FROM instruments i JOIN streams s ON s.instrument_id = i.id
         WHERE upper(i.symbol) = upper(depthwatch_stream_id.symbol);
        RAISE EXCEPTION 'depthwatch: no order book of % with category %, depth % has been recorded',
            quote_literal(symbol), coalesce(category, 'any'), coalesce(depth::text, 'any')
            USING ERRCODE = 'no_data_found',
                  HINT = format('%s is recorded as: %s', symbol, known);
    END IF;
    IF cardinality(categories) > 1 THEN
        RAISE EXCEPTION 'depthwatch: % is recorded in several categories (%): pass category',
            quote_literal(symbol), array_to_string(categories, ', ')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('e.g. category => %L', categories[1]);
    END IF;
    RAISE EXCEPTION 'depthwatch: % (%) is recorded at several depths (%): pass depth',
        quote_literal(symbol), categories[1], array_to_string(depths, ', ')
        USING ERRCODE = 'invalid_parameter_value',
              HINT = format('e.g. depth => %s', depths[1]);
END
$fn$
"""


def _range_reader(*, name: str, columns: str, rows: int, select: str) -> str:
    """A function of (symbol, from_ts, to_ts, depth, category) that returns
    rows with exchange times in [from_ts, to_ts): `columns`, the TABLE's
    columns after exchange_ts, local_ts, timestamp_us and local_timestamp_us;
    `select`, what RETURN QUERY selects after those four, reading `r`, with
    sid (the stream), iid and dep (its instrument and depth), from_us, to_us
    and first_chunk_us (the first second a chunk in range can start in)."""
    return f"""
CREATE OR REPLACE FUNCTION {name}(
    symbol text, from_ts timestamptz, to_ts timestamptz,
    depth integer DEFAULT NULL, category text DEFAULT NULL)
RETURNS TABLE(
    exchange_ts timestamptz, local_ts timestamptz, timestamp_us bigint,
    local_timestamp_us bigint, {columns})
LANGUAGE plpgsql STABLE ROWS {rows} AS $fn$
DECLARE
    sid integer;
    iid integer;
    dep smallint;
    from_us bigint;
    to_us bigint;
    first_chunk_us bigint;
BEGIN
    IF from_ts IS NULL OR to_ts IS NULL THEN
        RAISE EXCEPTION 'depthwatch: from_ts and to_ts are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    sid := depthwatch_stream_id(symbol, depth, category);
    SELECT s.instrument_id, s.depth INTO iid, dep FROM streams s WHERE s.id = sid;
    from_us := CASE WHEN from_ts = '-infinity' THEN 0
                    WHEN from_ts = 'infinity' THEN 4611686018427387904
                    ELSE (extract(epoch FROM from_ts) * 1000000)::bigint END;
    to_us := CASE WHEN to_ts = '-infinity' THEN 0
                  WHEN to_ts = 'infinity' THEN 4611686018427387904
                  ELSE (extract(epoch FROM to_ts) * 1000000)::bigint END;
    first_chunk_us := from_us - ((from_us % 1000000) + 1000000) % 1000000;
    RETURN QUERY
    SELECT timestamptz '1970-01-01 00:00:00+00' + r.ts_us * interval '1 microsecond',
           timestamptz '1970-01-01 00:00:00+00' + r.local_us * interval '1 microsecond',
           r.ts_us, r.local_us, {select}
END
$fn$
"""


# Exchange time in [from, to): the chunks that can hold such messages start in
# [the second of `from`, to) (a chunk never crosses a second of exchange time).
# The same message in two chunks (two collectors cut their chunks differently)
# or in a chunk and the legacy book_events table is returned once. DISTINCT ON
# keeps each level (message key, `pos` in the message) from the first copy:
# the legacy row, else the first chunk by (ts_us, u, n, snapshot), as
# read.book.book_events picks it; the same copy for every level of a message, so
# its local time is one collector's. Its sort is the final order's, so there
# is one sort and no window.
BOOK_UPDATES = _range_reader(
    name="depthwatch_book_updates",
    columns="""u bigint, seq bigint, is_snapshot boolean, side text,
    price numeric, amount numeric""",
    rows=100000,
    select="""r.u, r.seq, r.is_snapshot, r.side, r.price, r.amount
      FROM (
        SELECT DISTINCT ON (x.ts_us, x.seq, x.u, x.is_snapshot, x.pos) x.*
          FROM (
            SELECT l.ts_us, l.local_us, l.u, l.seq, l.is_snapshot, l.side, l.price, l.amount,
                   l.pos, c.ts_us AS c_ts, c.u AS c_u, c.n AS c_n, c.snapshot AS c_snap
              FROM book_chunks c
             CROSS JOIN LATERAL depthwatch_chunk_level_rows(c.ts_us, c.u, c.payload) AS l
             WHERE c.stream_id = sid AND c.ts_us >= first_chunk_us AND c.ts_us < to_us
               AND l.ts_us >= from_us AND l.ts_us < to_us
            UNION ALL
            SELECT e.ts_us, e.local_us, e.u, e.seq, e.is_snapshot, lv.side, lv.price,
                   lv.amount, lv.pos, NULL::bigint, NULL::bigint, NULL::integer, NULL::boolean
              FROM book_events e
             CROSS JOIN LATERAL (
                    SELECT 'bid'::text, b.p, b.s, b.o::integer
                      FROM unnest(e.bid_prices, e.bid_sizes) WITH ORDINALITY AS b(p, s, o)
                    UNION ALL
                    SELECT 'ask'::text, a.p, a.s, (a.o + cardinality(e.bid_prices))::integer
                      FROM unnest(e.ask_prices, e.ask_sizes) WITH ORDINALITY AS a(p, s, o)
                   ) AS lv(side, price, amount, pos)
             WHERE e.instrument_id = iid AND e.depth = dep
               AND e.ts_us >= from_us AND e.ts_us < to_us
          ) x
         ORDER BY x.ts_us, x.seq, x.u, x.is_snapshot, x.pos,
                  x.c_ts NULLS FIRST, x.c_u, x.c_n, x.c_snap
      ) r
     ORDER BY r.ts_us, r.seq, r.u, r.is_snapshot, r.pos;""",
)

# Top-of-book ticks: the messages flagged TOP_CHANGED in the chunks and the
# legacy quotes, one row per (ts_us, u) (the legacy quote, else the first
# chunk's by key), then a row only where the top differs from the row before:
# the writer also flags each chunk's first message, and a chunk boundary is no
# tick. So the first row is the first top known at or after `from`, whether or
# not it changed there. Order: exchange time, then seq, which a legacy quote
# takes from a chunk's copy of its message: inside the upgrade's overlap the
# two logs interleave within a millisecond. A legacy quote no chunk holds (no
# seq) comes first within its timestamp, as the old log precedes the chunks.
TOPS = _range_reader(
    name="depthwatch_tops",
    columns="""u bigint, bid_price numeric, bid_size numeric,
    ask_price numeric, ask_size numeric""",
    rows=10000,
    select="""r.u, r.bp, r.bs, r.ap, r.az
      FROM (
        SELECT d.*, row_number() OVER w AS rn,
               lag(d.bp) OVER w AS prev_bp, lag(d.bs) OVER w AS prev_bs,
               lag(d.ap) OVER w AS prev_ap, lag(d.az) OVER w AS prev_az
          FROM (
            SELECT DISTINCT ON (t.ts_us, t.u)
                   t.ts_us, t.local_us, t.u, max(t.seq) OVER (PARTITION BY t.ts_us, t.u) AS seq,
                   t.bp, t.bs, t.ap, t.az
              FROM (
                SELECT x.ts_us, x.local_us, x.u, x.seq, x.bid_price AS bp, x.bid_size AS bs,
                       x.ask_price AS ap, x.ask_size AS az, c.ts_us AS c_ts, c.u AS c_u,
                       c.n AS c_n, c.snapshot AS c_snap
                  FROM book_chunks c
                 CROSS JOIN LATERAL depthwatch_chunk_tops(c.ts_us, c.u, c.payload) x
                 WHERE c.stream_id = sid AND c.ts_us >= first_chunk_us AND c.ts_us < to_us
                   AND x.ts_us >= from_us AND x.ts_us < to_us
                UNION ALL
                SELECT q.ts_us, q.local_us, q.u, NULL::bigint, q.bid_price, q.bid_size,
                       q.ask_price, q.ask_size, NULL::bigint, NULL::bigint, NULL::integer,
                       NULL::boolean
                  FROM quotes q
                 WHERE q.instrument_id = iid AND q.depth = dep
                   AND q.ts_us >= from_us AND q.ts_us < to_us
              ) t
             ORDER BY t.ts_us, t.u, t.c_ts NULLS FIRST, t.c_u, t.c_n, t.c_snap
          ) d
        WINDOW w AS (ORDER BY d.ts_us, d.seq NULLS FIRST, d.u)
      ) r
     WHERE r.rn = 1
        OR (r.bp, r.bs, r.ap, r.az) IS DISTINCT FROM (r.prev_bp, r.prev_bs, r.prev_ap, r.prev_az)
     ORDER BY r.ts_us, r.seq NULLS FIRST, r.u;""",
)

STATEMENTS: tuple[str, ...] = (
    VARINTS,
    CHUNK_SKIM,
    CHUNK_MESSAGES,
    CHUNK_TOPS,
    CHUNK_LEVEL_ROWS,
    CHUNK_LEVELS,
    STREAM_ID,
    BOOK_UPDATES,
    TOPS,
)
