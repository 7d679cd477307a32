//! The fleet's leadership lease: the one row of `leadership` (migration 0004). Several
//! coordinators on one database elect one leader through it; the leader holds it by renewing
//! it, and a lease that is not renewed runs out at `expires_at`, by the database's clock, so
//! that one clock decides. `cluster.rs` runs the election and the renewals; this is its SQL.
//!
//! The lease has a connection of its own, so that a renewal never waits behind the store's
//! writes, and a [`Fence`] it shares with the store: once the leader cannot be sure that its
//! lease still runs, the fence refuses every commit the store would make.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::{PgPool, Row};

use crate::error::{Error, Result};

/// Refuses the store's commits once it is up: a coordinator whose lease may have run out
/// must not write, because another may lead by then.
#[derive(Clone, Debug, Default)]
pub struct Fence(Arc<AtomicBool>);

impl Fence {
    /// From now on, every commit is refused with [`Error::NotLeading`].
    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn check(&self) -> Result<()> {
        if self.0.load(Ordering::Acquire) {
            Err(Error::NotLeading)
        } else {
            Ok(())
        }
    }
}

/// Who leads (or led last), as the lease row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Where the other coordinators forward their calls.
    pub address: String,
    pub epoch: i64,
}

/// One coordinator's side of the lease: its instance id and address, on a connection of its
/// own.
#[derive(Debug, Clone)]
pub struct Lease {
    pool: PgPool,
    holder: String,
    address: String,
    term: Duration,
    fence: Fence,
}

impl Lease {
    pub(super) fn new(pool: PgPool, address: String, term: Duration, fence: Fence) -> Lease {
        Lease {
            pool,
            holder: uuid::Uuid::new_v4().to_string(),
            address,
            term,
            fence,
        }
    }

    /// The address this coordinator advertises.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// How long a lease runs without a renewal.
    pub fn term(&self) -> Duration {
        self.term
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Takes the lease if nobody holds it, if it ran out, or if it was taken last on this
    /// coordinator's own address (then its holder has died: an address is one process's at
    /// a time, and a coordinator keeps its address bound until its last commit). Returns the
    /// new epoch, or `None` if another holds it.
    pub async fn try_acquire(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "INSERT INTO leadership (id, holder, address, epoch, expires_at)
             VALUES (1, $1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond')
             ON CONFLICT (id) DO UPDATE
                SET holder = excluded.holder, address = excluded.address,
                    epoch = leadership.epoch + 1, expires_at = excluded.expires_at
                WHERE leadership.expires_at <= clock_timestamp()
                   OR leadership.address = excluded.address
             RETURNING epoch",
        )
        .bind(&self.holder)
        .bind(&self.address)
        .bind(millis(self.term))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| row.try_get::<i64, _>(0))
            .transpose()
            .map_err(Error::from)
    }

    /// Who leads now (`None` before anybody ever led).
    pub async fn leader(&self) -> Result<Option<Leader>> {
        let row = sqlx::query("SELECT address, epoch FROM leadership")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Leader {
                address: row.try_get(0)?,
                epoch: row.try_get(1)?,
            })
        })
        .transpose()
        .map_err(|err: sqlx::Error| Error::from(err))
    }

    /// Runs the lease for another term from now. `false`: it is not ours any more.
    pub async fn renew(&self, epoch: i64) -> Result<bool> {
        let renewed = sqlx::query(
            "UPDATE leadership SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
             WHERE holder = $1 AND epoch = $2",
        )
        .bind(&self.holder)
        .bind(epoch)
        .bind(millis(self.term))
        .execute(&self.pool)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Gives the lease up (after the leader's last commit), so that another coordinator takes
    /// over at once instead of when it runs out.
    pub async fn release(&self, epoch: i64) -> Result<()> {
        sqlx::query(
            "UPDATE leadership SET expires_at = clock_timestamp() WHERE holder = $1 AND epoch = $2",
        )
        .bind(&self.holder)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
