-- drift 0.1.0: SQL functions for the drift vector engine (schema drift, PL/Python).
--
-- Every function names its collection by foreign table (a regclass) or by collection name plus
-- `server`: a foreign server's name, or an engine address such as 'unix:/run/drift/drift.sock'.
-- With no server, a drift foreign table of that name is used, else the setting drift.server, else the
-- only drift foreign server. The bodies live in the Python module drift_fdw.sqlapi, which needs this
-- repository and its venv on the backends' PYTHONPATH. Multicorn is not needed for these functions.
--
-- Engine token: put it in a USER MAPPING (CREATE USER MAPPING FOR role SERVER s OPTIONS (token '...')),
-- which only that role and the server's owner can read. The setting drift.token also works when
-- `server` is a bare address, but a value stored with ALTER ROLE / ALTER DATABASE ... SET is readable by
-- every role through pg_db_role_setting; the functions emit a WARNING whenever they use it.

\echo Use "CREATE EXTENSION drift CASCADE" to load this file. \quit

-- ------------------------------------------------------------------------------------ collections
CREATE FUNCTION drift.create_collection(
    name text, dim integer, metric text DEFAULT 'l2', server text DEFAULT NULL, params jsonb DEFAULT NULL,
    if_not_exists boolean DEFAULT false)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.create_collection(name, dim, metric, server, params, if_not_exists)
$$;
COMMENT ON FUNCTION drift.create_collection(text, integer, text, text, jsonb, boolean) IS
'Create a collection (dimension, metric l2 | cosine | ip, optional parameters as jsonb) on an engine; returns its description.';

CREATE FUNCTION drift.drop_collection(name text, server text DEFAULT NULL, if_exists boolean DEFAULT false)
RETURNS boolean LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.drop_collection(name, server, if_exists)
$$;
COMMENT ON FUNCTION drift.drop_collection(text, text, boolean) IS
'Drop a collection and all its vectors (true when dropped; false when missing and if_exists).';

CREATE FUNCTION drift.drop_collection(tbl regclass, if_exists boolean DEFAULT false)
RETURNS boolean LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.drop_collection(None, None, if_exists, table=tbl)
$$;
COMMENT ON FUNCTION drift.drop_collection(regclass, boolean) IS
'Drop the collection behind a drift foreign table (the foreign table itself stays).';

CREATE FUNCTION drift.collections(server text DEFAULT NULL)
RETURNS TABLE(name text, dim integer, metric text, count bigint) LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.collections(server)
$$;
COMMENT ON FUNCTION drift.collections(text) IS 'The collections of an engine: name, dimension, metric, live vectors.';

-- ------------------------------------------------------------------------------------ index and parameters
CREATE FUNCTION drift.train(collection text, server text DEFAULT NULL, n_buckets integer DEFAULT NULL)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.train(collection, server, n_buckets)
$$;
COMMENT ON FUNCTION drift.train(text, text, integer) IS
'Train the collection''s buckets (k-means + SQ8 ranges) and rebuild its on-disk index; returns a summary.';

CREATE FUNCTION drift.train(tbl regclass, n_buckets integer DEFAULT NULL)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.train(None, None, n_buckets, table=tbl)
$$;
COMMENT ON FUNCTION drift.train(regclass, integer) IS 'Train the collection behind a drift foreign table.';

CREATE FUNCTION drift.set_params(
    collection text, server text DEFAULT NULL, lambda double precision DEFAULT NULL,
    tau double precision DEFAULT NULL, nprobe integer DEFAULT NULL, ef integer DEFAULT NULL,
    rerank integer DEFAULT NULL, params jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
known = {"lambda": args[2], "tau": args[3], "nprobe": args[4], "ef": args[5], "rerank": args[6]}
return sqlapi.set_params(args[0], args[1], None, known, args[7])
$$;
COMMENT ON FUNCTION drift.set_params(text, text, double precision, double precision, integer, integer, integer, jsonb) IS
'Change search parameters (lambda, tau: drift-aware routing; nprobe, ef, rerank; any other as params jsonb); returns all parameters.';

CREATE FUNCTION drift.set_params(
    tbl regclass, lambda double precision DEFAULT NULL, tau double precision DEFAULT NULL,
    nprobe integer DEFAULT NULL, ef integer DEFAULT NULL, rerank integer DEFAULT NULL, params jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
known = {"lambda": args[1], "tau": args[2], "nprobe": args[3], "ef": args[4], "rerank": args[5]}
return sqlapi.set_params(None, None, args[0], known, args[6])
$$;
COMMENT ON FUNCTION drift.set_params(regclass, double precision, double precision, integer, integer, integer, jsonb) IS
'Change the search parameters of the collection behind a drift foreign table; returns all parameters.';

CREATE FUNCTION drift.params(collection text, server text DEFAULT NULL)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.params(collection, server)
$$;
COMMENT ON FUNCTION drift.params(text, text) IS 'The collection''s parameters as jsonb.';

CREATE FUNCTION drift.params(tbl regclass)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.params(None, None, table=tbl)
$$;
COMMENT ON FUNCTION drift.params(regclass) IS 'The parameters of the collection behind a drift foreign table.';

-- ------------------------------------------------------------------------------------ operations
CREATE FUNCTION drift.stats(collection text, server text DEFAULT NULL)
RETURNS TABLE(name text, value jsonb) LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.stats(collection, server)
$$;
COMMENT ON FUNCTION drift.stats(text, text) IS
'The collection''s statistics (counts, buckets, drift, cache, memtables), one row per statistic.';

CREATE FUNCTION drift.stats(tbl regclass)
RETURNS TABLE(name text, value jsonb) LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.stats(None, None, table=tbl)
$$;
COMMENT ON FUNCTION drift.stats(regclass) IS 'The statistics of the collection behind a drift foreign table.';

CREATE FUNCTION drift.flush(collection text, server text DEFAULT NULL)
RETURNS bigint LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.flush(collection, server)
$$;
COMMENT ON FUNCTION drift.flush(text, text) IS 'Flush the collection''s memtables to its buckets now; returns the vectors flushed.';

CREATE FUNCTION drift.flush(tbl regclass)
RETURNS bigint LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.flush(None, None, table=tbl)
$$;
COMMENT ON FUNCTION drift.flush(regclass) IS 'Flush the memtables of the collection behind a drift foreign table.';

CREATE FUNCTION drift.maintain(collection text, server text DEFAULT NULL, max_jobs integer DEFAULT NULL)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.maintain(collection, server, max_jobs)
$$;
COMMENT ON FUNCTION drift.maintain(text, text, integer) IS
'Run pending maintenance (bucket split / merge / compaction) now, most urgent first; returns what was done.';

CREATE FUNCTION drift.maintain(tbl regclass, max_jobs integer DEFAULT NULL)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.maintain(None, None, max_jobs, table=tbl)
$$;
COMMENT ON FUNCTION drift.maintain(regclass, integer) IS 'Run pending maintenance of the collection behind a drift foreign table.';

CREATE FUNCTION drift.health(server text DEFAULT NULL)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.health(server)
$$;
COMMENT ON FUNCTION drift.health(text) IS 'The engine server''s health: status, version, collections, limits, fast path. The engine''s token belongs in a USER MAPPING of a foreign server (not in the setting drift.token, which ALTER ROLE / DATABASE ... SET makes readable by every role).';

CREATE FUNCTION drift.backend_stats()
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.backend_stats()
$$;
COMMENT ON FUNCTION drift.backend_stats() IS
'This backend''s engine traffic so far: streams, stream batches and rows pulled, lookups, scans, writes.';

-- ------------------------------------------------------------------------------------ search
CREATE FUNCTION drift.search(
    collection text, query real[], k integer DEFAULT 10, server text DEFAULT NULL, filter jsonb DEFAULT NULL,
    nprobe integer DEFAULT NULL, ef integer DEFAULT NULL, max_distance double precision DEFAULT NULL,
    payloads boolean DEFAULT true)
RETURNS TABLE(id bigint, distance real, payload jsonb) LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.search(args[0], args[1], args[2], args[3], args[4], args[5], args[6], args[7], args[8])
$$;
COMMENT ON FUNCTION drift.search(text, real[], integer, text, jsonb, integer, integer, double precision, boolean) IS
'The k nearest vectors to query (id, distance ascending, payload); filter is a jsonb object of payload equalities; nprobe / ef override the collection''s parameters; max_distance bounds the distance; payloads => false skips reading payloads (faster).';

CREATE FUNCTION drift.search(
    tbl regclass, query real[], k integer DEFAULT 10, filter jsonb DEFAULT NULL, nprobe integer DEFAULT NULL,
    ef integer DEFAULT NULL, max_distance double precision DEFAULT NULL, payloads boolean DEFAULT true)
RETURNS TABLE(id bigint, distance real, payload jsonb) LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.search(None, args[1], args[2], None, args[3], args[4], args[5], args[6], args[7], table=args[0])
$$;
COMMENT ON FUNCTION drift.search(regclass, real[], integer, jsonb, integer, integer, double precision, boolean) IS
'The k nearest vectors in the collection behind a drift foreign table (id, distance, payload).';

CREATE FUNCTION drift.get(collection text, ids bigint[], server text DEFAULT NULL)
RETURNS TABLE(id bigint, embedding real[], payload jsonb) LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.get(collection, ids, server)
$$;
COMMENT ON FUNCTION drift.get(text, bigint[], text) IS
'Point lookup: the vectors and payloads of the ids that exist, each once, in the order first asked (absent ids are left out); any number of ids (split into calls the engine takes).';

CREATE FUNCTION drift.get(tbl regclass, ids bigint[])
RETURNS TABLE(id bigint, embedding real[], payload jsonb) LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.get(None, ids, None, table=tbl)
$$;
COMMENT ON FUNCTION drift.get(regclass, bigint[]) IS 'Point lookup in the collection behind a drift foreign table.';

-- ------------------------------------------------------------------------------------ COPY into a foreign table
CREATE FUNCTION drift.copy_trigger()
RETURNS trigger LANGUAGE plpython3u AS $$
from drift_fdw import copyin
return copyin.trigger(TD)
$$;
COMMENT ON FUNCTION drift.copy_trigger() IS
'Trigger function installed by drift.enable_copy: routes COPY rows into the FDW''s transaction buffer.';

CREATE FUNCTION drift.enable_copy(tbl regclass)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM drift.disable_copy(tbl);
    EXECUTE format('CREATE TRIGGER drift_copy_begin BEFORE INSERT ON %s FOR EACH STATEMENT '
                   'EXECUTE FUNCTION drift.copy_trigger()', tbl);
    EXECUTE format('CREATE TRIGGER drift_copy_row BEFORE INSERT OR UPDATE ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION drift.copy_trigger()', tbl);
    EXECUTE format('CREATE TRIGGER drift_copy_end AFTER INSERT ON %s FOR EACH STATEMENT '
                   'EXECUTE FUNCTION drift.copy_trigger()', tbl);
END $$;
COMMENT ON FUNCTION drift.enable_copy(regclass) IS
'Make COPY FROM into a drift foreign table work (Multicorn2 alone crashes on COPY): adds three triggers; rows are buffered and applied at commit, and COPY reports 0 rows. PostgreSQL 15 and older.';

CREATE FUNCTION drift.disable_copy(tbl regclass)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    name name;
BEGIN
    FOR name IN SELECT tgname FROM pg_catalog.pg_trigger
                WHERE tgrelid = tbl AND tgname IN ('drift_copy_begin', 'drift_copy_row', 'drift_copy_end')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', name, tbl);
    END LOOP;
END $$;
COMMENT ON FUNCTION drift.disable_copy(regclass) IS 'Remove the COPY triggers of drift.enable_copy.';

CREATE FUNCTION drift.copy_guard()
RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
BEGIN
    FOR t IN
        SELECT DISTINCT c.objid::regclass
        FROM pg_catalog.pg_event_trigger_ddl_commands() c
        JOIN pg_catalog.pg_foreign_table ft ON ft.ftrelid = c.objid
        JOIN pg_catalog.pg_foreign_server s ON s.oid = ft.ftserver
        WHERE c.object_type = 'foreign table'
          AND s.srvoptions && ARRAY['wrapper=drift_fdw.DriftFDW', 'wrapper=drift_fdw.fdw.DriftFDW']
    LOOP
        PERFORM drift.validate_table(t);
        PERFORM drift.enable_copy(t);
    END LOOP;
END $$;
COMMENT ON FUNCTION drift.copy_guard() IS
'Event trigger: every new or altered drift foreign table is checked (drift.validate_table) and gets drift.enable_copy, so COPY into it works instead of crashing the backend.';

CREATE FUNCTION drift.validate_table(tbl regclass)
RETURNS void LANGUAGE plpython3u AS $$
from drift_fdw import validate
validate.validate_table(tbl)
$$;
COMMENT ON FUNCTION drift.validate_table(regclass) IS
'Check a drift foreign table''s options and columns (unknown options, roles, types drift cannot store exactly such as bytea and numeric); ERROR 22023 with a hint. Run at CREATE / ALTER FOREIGN TABLE by the event trigger.';

CREATE EVENT TRIGGER drift_copy_guard ON ddl_command_end
    WHEN TAG IN ('CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'IMPORT FOREIGN SCHEMA')
    EXECUTE FUNCTION drift.copy_guard();
COMMENT ON EVENT TRIGGER drift_copy_guard IS 'Runs drift.copy_guard() after CREATE FOREIGN TABLE, ALTER FOREIGN TABLE and IMPORT FOREIGN SCHEMA.';

-- ------------------------------------------------------------------------------------ loading without the FDW
CREATE FUNCTION drift.upsert(collection text, rows_query text, server text DEFAULT NULL, batch_size integer DEFAULT 10000)
RETURNS bigint LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.upsert(collection, rows_query, server, batch_size)
$$;
COMMENT ON FUNCTION drift.upsert(text, text, text, integer) IS
'Insert or replace the rows of a query returning (id, embedding[, payload jsonb]), in batches each durable when sent (not rolled back with the transaction); returns the row count.';

CREATE FUNCTION drift.upsert(tbl regclass, rows_query text, batch_size integer DEFAULT 10000)
RETURNS bigint LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.upsert(None, rows_query, None, batch_size, table=tbl)
$$;
COMMENT ON FUNCTION drift.upsert(regclass, text, integer) IS
'drift.upsert into the collection behind a drift foreign table (batches are not rolled back with the transaction).';

CREATE FUNCTION drift.delete(collection text, ids bigint[], server text DEFAULT NULL)
RETURNS bigint LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.delete(collection, ids, server)
$$;
COMMENT ON FUNCTION drift.delete(text, bigint[], text) IS
'Delete vectors by id at once (not rolled back with the transaction); returns how many existed.';

CREATE FUNCTION drift.delete(tbl regclass, ids bigint[])
RETURNS bigint LANGUAGE plpython3u AS $$
from drift_fdw import sqlapi
return sqlapi.delete(None, ids, None, table=tbl)
$$;
COMMENT ON FUNCTION drift.delete(regclass, bigint[]) IS 'Delete vectors by id from the collection behind a drift foreign table.';

-- ------------------------------------------------------------------------------------ sharded tables (DESIGN §14)
-- One public name over drift collections on several engine servers: a PARTITION BY HASH (id) parent of
-- drift foreign partitions (one per foreign server) and a view whose trigger (drift.route) sends each
-- written row to its partition. COMMIT applies each shard's writes separately (atomic per shard, not across
-- shards). See drift_fdw/shards.py, drift_fdw/routing.py and drift_fdw/fanout.py.
CREATE FUNCTION drift.shard_guard()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'drift: % into %.% is not supported: it is the partitioned table of the sharded table %',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = '0A000',
              HINT = format('write through %s (its trigger sends each row to its shard); Multicorn2 cannot '
                            'take rows PostgreSQL routes into a foreign partition', TG_ARGV[0]);
END $$;
COMMENT ON FUNCTION drift.shard_guard() IS
'Statement trigger on the parent of a sharded table: refuses INSERT / COPY into it (0A000) before PostgreSQL routes a row into a foreign partition, which crashes Multicorn2.';

CREATE FUNCTION drift.shard_key_guard()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'drift: an UPDATE of %.% may not change id (the row would be routed to another shard)',
            TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = '0A000', HINT = format('UPDATE %s instead: it moves the row (DELETE + INSERT)', TG_ARGV[0]);
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION drift.shard_key_guard() IS
'Row trigger on the parent of a sharded table (and so on its partitions): refuses an UPDATE that changes id, which PostgreSQL would route into another foreign partition.';

CREATE FUNCTION drift.route()
RETURNS trigger LANGUAGE plpython3u AS $$
from drift_fdw import routing
return routing.trigger(TD)
$$;
COMMENT ON FUNCTION drift.route() IS
'Trigger function of a sharded table''s view (arguments: public name, modulus, one partition per remainder): each written row goes straight into the transaction buffer of the partition its id hashes to (no SQL statement per row); an UPDATE that changes id moves the row.';

CREATE FUNCTION drift.create_sharded_table(
    name text, dim integer, metric text DEFAULT 'l2', servers text[] DEFAULT NULL, fields text DEFAULT NULL,
    collection text DEFAULT NULL, if_not_exists boolean DEFAULT false)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import shards
return shards.create_sharded_table(name, dim, metric, servers, fields, collection, if_not_exists)
$$;
COMMENT ON FUNCTION drift.create_sharded_table(text, integer, text, text[], text, text, boolean) IS
'Create a sharded table: the view <name> (write through it), the PARTITION BY HASH (id) table <name>_shards with one drift foreign partition per server (all drift servers when servers is NULL), payload columns from fields (e.g. ''tag text''), and the collections on the engines (if_not_exists: reuse matching ones).';

CREATE FUNCTION drift.drop_sharded_table(name text, drop_collections boolean DEFAULT true)
RETURNS jsonb LANGUAGE plpython3u AS $$
from drift_fdw import shards
return shards.drop_sharded_table(name, drop_collections)
$$;
COMMENT ON FUNCTION drift.drop_sharded_table(text, boolean) IS
'Drop a sharded table: its view (with its routing triggers), partitioned table and partitions, and (unless drop_collections is false) the collections on the engines.';
