//! The writer's batches: when a commit syncs, what a command that fails part-way undoes,
//! and how much a savepoint can hold in the bundled SQLite's build.

use super::*;

fn synchronous(conn: &Connection) -> i64 {
    conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
        .expect("the pragma reads")
}

#[test]
fn a_batch_with_nothing_to_make_durable_commits_without_an_fsync() {
    let conn = Connection::open_in_memory().expect("a database");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("the pragma sets");
    let mut mode = Synchronous::new(SyncMode::Full);
    // SQLite's codes: NORMAL is 1, FULL is 2.
    assert!(!mode.set(&conn, false).expect("set"));
    assert_eq!(synchronous(&conn), 1);
    assert!(mode.set(&conn, true).expect("set"));
    assert_eq!(synchronous(&conn), 2);
    assert!(mode.set(&conn, true).expect("set"));
    assert_eq!(synchronous(&conn), 2);
}

/// A batch in which one command fails part-way through its writes: the batch is run
/// again with each command in a savepoint, so the others commit, the failing one leaves
/// nothing behind, and its caller hears why.
#[test]
fn a_command_that_fails_part_way_takes_only_its_own_writes_with_it() {
    use crate::store::{Origin, conformance::new_job};
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut conn = Connection::open(dir.path().join("batch.db")).expect("a database");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("the pragma sets");
    let counts = Counts::register(&conn).expect("counts");
    super::super::migrate::run(&mut conn).expect("migrations");
    let mut replies = Vec::new();
    let mut submit = |jobs: Vec<crate::store::NewJob>| {
        let (reply, rx) = oneshot::channel();
        replies.push(rx);
        Command::Submit {
            submit: Submit {
                origin: Origin::Batch,
                jobs,
                group: None,
                scope: None,
                durability: Durability::BeforeReply,
            },
            reply,
        }
    };
    let (a, written, c) = (new_job("q"), new_job("q"), new_job("q"));
    // Its first job is written before the second's missing dependency is found.
    let missing = JobId::new();
    let orphan = crate::store::NewJob {
        depends_on: vec![missing],
        ..new_job("q")
    };
    let mut batch = vec![
        submit(vec![a.clone()]),
        submit(vec![written.clone(), orphan]),
        submit(vec![c.clone()]),
    ];
    let fault = commit_batch(
        &mut conn,
        &counts,
        &mut batch,
        &mut Synchronous::new(SyncMode::Normal),
        &WriteCounters::default(),
        &Metrics::new(),
    );
    assert_eq!(fault, None);
    let answers: Vec<_> = replies
        .into_iter()
        .map(|mut rx| rx.try_recv().expect("answered"))
        .collect();
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    assert!(
        matches!(&answers[1], Err(err) if err.to_string().contains(&missing.to_string())),
        "{:?}",
        answers[1]
    );
    assert!(answers[2].is_ok(), "{:?}", answers[2]);
    let mut stored: Vec<String> = conn
        .prepare("SELECT id FROM jobs")
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    stored.sort();
    let mut expected = vec![a.id.to_string(), c.id.to_string()];
    expected.sort();
    assert_eq!(stored, expected, "{} was written and undone", written.id);
}

/// A command in a savepoint whose undo outgrows what SQLite keeps in memory (the
/// statement journal's spill size, `.cargo/config.toml`) still commits, and is still
/// undone by its savepoint. Built with a spill size above 128 KiB, SQLite failed both
/// with SQLITE_FULL on a nearly empty disk.
#[test]
fn a_command_whose_undo_outgrows_memory_commits_or_rolls_back_in_its_savepoint() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let conn = Connection::open(dir.path().join("big.db")).expect("a database");
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .expect("the pragma sets");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("the pragma sets");
    // 12 MiB of rows: rewriting them all puts each page in the savepoint's journal.
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL);
         CREATE TABLE other (id INTEGER PRIMARY KEY);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO t (id, b) SELECT i, zeroblob(4000) FROM n;",
    )
    .expect("the table fills");
    let rewrite = "UPDATE t SET b = randomblob(4000)";
    let untouched = |conn: &Connection| -> i64 {
        conn.query_row("SELECT count(*) FROM t WHERE b = zeroblob(4000)", [], |r| {
            r.get(0)
        })
        .expect("the count reads")
    };
    for undo in [true, false] {
        conn.execute_batch("BEGIN IMMEDIATE; INSERT INTO other DEFAULT VALUES; SAVEPOINT command")
            .expect("the batch begins");
        let rewritten = conn.execute(rewrite, []);
        assert_eq!(
            rewritten.map_err(|e| e.to_string()),
            Ok(3000),
            "a 12 MiB rewrite in a savepoint"
        );
        assert!(!conn.is_autocommit(), "the transaction is still open");
        let end = if undo {
            "ROLLBACK TO command; RELEASE command; COMMIT"
        } else {
            "RELEASE command; COMMIT"
        };
        conn.execute_batch(end).expect("the batch commits");
        assert_eq!(untouched(&conn), if undo { 3000 } else { 0 });
    }
    let others: i64 = conn
        .query_row("SELECT count(*) FROM other", [], |r| r.get(0))
        .expect("the count reads");
    assert_eq!(others, 2, "what came before each savepoint committed");
}

#[test]
fn under_sync_normal_no_batch_is_synced() {
    let conn = Connection::open_in_memory().expect("a database");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("the pragma sets");
    let mut mode = Synchronous::new(SyncMode::Normal);
    assert!(!mode.set(&conn, true).expect("set"));
    assert_eq!(synchronous(&conn), 1);
}
