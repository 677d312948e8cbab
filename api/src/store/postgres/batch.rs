//! A batch as one transaction: its advisory locks, its writes in order, COMMIT; run again
//! after a deadlock or serialisation failure (see the module docs of [`super`] for why this is
//! serialisable across nodes).

use tokio_postgres::IsolationLevel;
use tokio_postgres::types::ToSql;

use super::sql::{self, Statements};
use super::{ATTEMPTS, Failure, connection, failure};
use crate::store::tables::{self, Field, Ty};
use crate::store::{StoreError, Write};

/// One bound value.
type Param = Box<dyn ToSql + Sync + Send>;

/// The key and a record's fields as typed parameters (`$1` = key, then the columns).
fn params(st: &Statements, id: &str, fields: &[Field]) -> Result<Vec<Param>, StoreError> {
    tables::fits(st.table, fields).map_err(StoreError::Unavailable)?;
    let mut out: Vec<Param> = Vec::with_capacity(fields.len() + 1);
    out.push(Box::new(id.to_owned()));
    for (i, (ty, field)) in st.types.iter().zip(fields.iter().cloned()).enumerate() {
        out.push(match (ty, field) {
            (Ty::Text | Ty::Json, Field::Text(s)) => Box::new(Some(s)),
            (Ty::Text | Ty::Json, Field::Null) => Box::new(None::<String>),
            (Ty::Int, Field::Int(n)) => Box::new(Some(n)),
            (Ty::Int, Field::Null) => Box::new(None::<i64>),
            (Ty::Bool, Field::Bool(b)) => Box::new(Some(b)),
            (Ty::Bool, Field::Null) => Box::new(None::<bool>),
            (ty, _) => {
                return Err(StoreError::Unavailable(format!(
                    "{}: column {} is {ty:?}, given another type",
                    st.table.name,
                    i + 1
                )));
            }
        });
    }
    Ok(out)
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| -> &(dyn ToSql + Sync) { p.as_ref() })
        .collect()
}

/// The advisory locks a batch takes first: every record it puts or expects, every unique
/// value it claims or releases; sorted and without repeats.
fn lock_keys(writes: &[Write]) -> Vec<i64> {
    let mut keys: Vec<i64> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Put { kind, id, .. } | Write::Expect { kind, id, .. } => {
                Some(sql::lock_key("record", kind, id))
            }
            Write::Claim { ns, value, .. } | Write::Release { ns, value } => {
                Some(sql::lock_key("unique", ns, value))
            }
            Write::Delete { .. } => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Runs a batch, again after a deadlock or serialisation failure.
pub(super) async fn commit(
    pool: deadpool_postgres::Pool,
    writes: Vec<Write>,
) -> Result<(), StoreError> {
    let locks = lock_keys(&writes);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut client = connection(&pool).await?;
        match apply(&mut client, &writes, &locks).await {
            Ok(()) => return Ok(()),
            Err(Failure::Retry) if attempt < ATTEMPTS => {
                tracing::debug!(
                    attempt,
                    "store batch rolled back by PostgreSQL; running it again"
                );
            }
            Err(f) => return Err(f.into()),
        }
    }
}

/// One transaction: the locks, the writes in order, COMMIT. Any failure drops the transaction,
/// which rolls it back: nothing of the batch stays.
async fn apply(
    client: &mut deadpool_postgres::Client,
    writes: &[Write],
    locks: &[i64],
) -> Result<(), Failure> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(|e| failure("begin", &e))?;
    if !locks.is_empty() {
        let st = tx
            .prepare_cached(sql::LOCK_KEYS)
            .await
            .map_err(|e| failure("lock", &e))?;
        tx.execute(&st, &[&locks])
            .await
            .map_err(|e| failure("lock", &e))?;
    }
    for write in writes {
        apply_write(&tx, write).await?;
    }
    tx.commit().await.map_err(|e| failure("commit", &e))
}

async fn run(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, Failure> {
    let st = tx
        .prepare_cached(sql)
        .await
        .map_err(|e| failure("prepare", &e))?;
    tx.query(&st, params)
        .await
        .map_err(|e| failure("write", &e))
}

/// The single text column of the first row, if any.
pub(super) fn first_text(rows: &[tokio_postgres::Row]) -> Result<Option<String>, Failure> {
    rows.first()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(|e| failure("read", &e))
}

async fn apply_write(
    tx: &deadpool_postgres::Transaction<'_>,
    write: &Write,
) -> Result<(), Failure> {
    let unknown = |kind: &str| Failure::Unavailable(format!("no table for record kind {kind}"));
    match write {
        Write::Put {
            kind,
            id,
            fields,
            indexes,
        } => {
            let st = sql::of(kind).ok_or_else(|| unknown(kind))?;
            let values = params(st, id, fields).map_err(|e| Failure::Unavailable(e.to_string()))?;
            let rows = run(tx, &st.upsert, &refs(&values)).await?;
            let version: i64 = rows
                .first()
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(|e| failure("upsert", &e))?
                .unwrap_or_default();
            if version == 1 {
                for (name, key) in indexes {
                    if let Some((_, join)) = tables::JOIN_ROWS.iter().find(|(n, _)| n == name) {
                        run(tx, &tables::numbered(join), &[key, id]).await?;
                    }
                }
            }
        }
        Write::Delete { kind, id } => {
            let st = sql::of(kind).ok_or_else(|| unknown(kind))?;
            // Join rows go with the record (ON DELETE CASCADE).
            run(tx, &st.delete, &[id]).await?;
        }
        Write::Claim { ns, value, owner } => {
            let unique = tables::unique(ns);
            let holder = match unique {
                Some(u) => first_text(&run(tx, &tables::numbered(u.owner), &[value]).await?)?,
                None => {
                    let sql = tables::numbered(tables::CLAIM_OWNER);
                    first_text(&run(tx, &sql, &[ns, value]).await?)?
                }
            };
            match (holder, unique) {
                (Some(holder), _) if holder != *owner => {
                    return Err(Failure::Conflict(ns.clone()));
                }
                (Some(_), _) => {}
                (None, Some(u)) => {
                    if let Some(insert) = u.insert {
                        run(tx, &tables::numbered(insert), &[value, owner]).await?;
                    }
                }
                (None, None) => {
                    let sql = tables::numbered(tables::CLAIM_INSERT);
                    run(tx, &sql, &[ns, value, owner]).await?;
                }
            }
        }
        Write::Release { ns, value } => match tables::unique(ns) {
            Some(u) => {
                if let Some(delete) = u.delete {
                    run(tx, &tables::numbered(delete), &[value]).await?;
                }
            }
            None => {
                run(tx, &tables::numbered(tables::CLAIM_DELETE), &[ns, value]).await?;
            }
        },
        Write::Expect { kind, id, version } => {
            let st = sql::of(kind).ok_or_else(|| unknown(kind))?;
            let rows = run(tx, &st.lock_version, &[id]).await?;
            let current: Option<i64> = rows
                .first()
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(|e| failure("expect", &e))?;
            let current = current.and_then(|v| u64::try_from(v).ok());
            if current != *version {
                return Err(Failure::Conflict(format!("expect:{kind}")));
            }
        }
    }
    Ok(())
}
