//! The LISTEN side of cross-instance events: one connection of its own per
//! instance, kept open, each `NOTIFY` forwarded to the engine as a
//! [`Change`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::store::Change;

/// Pause before the LISTEN connection is made again.
const LISTEN_RETRY: Duration = Duration::from_millis(500);
/// The LISTEN connection is asked `SELECT 1` every this many 100 ms ticks...
const LIVENESS_TICKS: u32 = 50;
/// ...and replaced when it does not answer within this.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps a LISTEN connection open and forwards each notice; reconnects
/// (and asks for a resync) whenever it drops.
pub(super) async fn listen_loop(
    pg: super::Connector,
    channel: String,
    tx: mpsc::Sender<Change>,
    stop: CancellationToken,
) {
    loop {
        let connected = tokio::select! {
            r = pg.connect() => r,
            _ = stop.cancelled() => return,
        };
        match connected {
            Ok((client, mut conn)) => {
                let overflow = Arc::new(AtomicBool::new(false));
                let (ftx, of) = (tx.clone(), overflow.clone());
                let mut driver = tokio::spawn(async move {
                    let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = msgs.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => {
                                if let Some(c) = parse_notice(n.payload()) {
                                    if ftx.try_send(c).is_err() {
                                        of.store(true, Ordering::Release);
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "postgres LISTEN connection lost");
                                return;
                            }
                        }
                    }
                });
                let listening = client
                    .batch_execute(&format!("LISTEN {channel}"))
                    .await
                    .is_ok()
                    && tx.send(Change::Resync).await.is_ok();
                if listening {
                    let mut ticks = 0u32;
                    loop {
                        tokio::select! {
                            _ = &mut driver => break,
                            _ = stop.cancelled() => {
                                driver.abort();
                                return;
                            }
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                                if overflow.swap(false, Ordering::AcqRel)
                                    && tx.send(Change::Resync).await.is_err()
                                {
                                    driver.abort();
                                    return;
                                }
                                ticks += 1;
                                // A connection can die without a word (a
                                // half-open TCP link): ask it now and then.
                                if ticks.is_multiple_of(LIVENESS_TICKS) {
                                    let alive = tokio::time::timeout(
                                        LIVENESS_TIMEOUT,
                                        client.simple_query("SELECT 1"),
                                    )
                                    .await;
                                    if !matches!(alive, Ok(Ok(_))) {
                                        tracing::warn!("postgres LISTEN connection stopped answering");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                }
                driver.abort();
                drop(client);
            }
            Err(e) => tracing::debug!(error = %e, "postgres LISTEN connect failed"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(LISTEN_RETRY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// `"<uuid>:<sequence>"`.
fn parse_notice(s: &str) -> Option<Change> {
    let (id, seq) = s.split_once(':')?;
    Some(Change::Job {
        id: id.parse().ok()?,
        sequence: seq.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn notices_parse_and_garbage_is_ignored() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_notice(&format!("{id}:7")),
            Some(Change::Job { id, sequence: 7 })
        );
        assert_eq!(parse_notice("nope"), None);
        assert_eq!(parse_notice(&format!("{id}:-1")), None);
    }
}
