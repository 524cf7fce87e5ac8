-- Runs once, when the postgres container initialises its data directory.
-- The engine listens on the socket shared through the drift-run volume (see compose.yaml).
CREATE EXTENSION IF NOT EXISTS drift CASCADE;      -- the drift.* functions (PL/Python)
CREATE EXTENSION IF NOT EXISTS multicorn;          -- the foreign data wrapper machinery
CREATE EXTENSION IF NOT EXISTS vector;             -- pgvector: vector(n) columns, and a baseline
CREATE SERVER IF NOT EXISTS drift FOREIGN DATA WRAPPER multicorn
    OPTIONS (wrapper 'drift_fdw.DriftFDW', address 'unix:/run/drift/drift.sock');
