//! Per-connection state the pipeline holds on to: a connection's slot under the connection
//! limits (per client and overall, also held by a WebSocket tunnel), the requests in flight on
//! it (which decide when it is idle), and its count in the open-connections gauge. The accept
//! loop and the connection task in `server` make these; `handler` holds them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guard_config::model::Cidr;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::headers::ClientNet;
use crate::metrics::Metrics;

/// Open connections per client, held under `max_connections_per_client` so that one client
/// cannot take every slot of `max_connections`. A trusted proxy is not limited: its connections
/// carry many clients, and which ones is only known per request.
#[derive(Debug)]
pub(crate) struct PerClient {
    max: usize,
    trusted: Vec<Cidr>,
    open: Mutex<HashMap<ClientNet, ClientCount>>,
}

#[derive(Debug, Default)]
struct ClientCount {
    open: usize,
    // Whether this client's refusals have been logged since it was last under the limit: one
    // warning per episode, not one per connection of a flood.
    warned: bool,
}

impl PerClient {
    pub(crate) fn new(max: usize, trusted: &[Cidr]) -> Self {
        PerClient {
            max,
            trusted: trusted.to_vec(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection from `peer`: `Ok(None)` when it is not counted, `Err` when the
    /// client is at its limit and the connection must be closed.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Option<ClientConn>, ()> {
        if self.max == 0 || self.trusted.iter().any(|c| c.contains(peer)) {
            return Ok(None);
        }
        let net = ClientNet::of(peer);
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(net).or_default();
        if count.open >= self.max {
            if !count.warned {
                count.warned = true;
                tracing::warn!(
                    "closing new connections from {net}: it has {} open (max_connections_per_client)",
                    count.open
                );
            }
            return Err(());
        }
        count.open += 1;
        Ok(Some(ClientConn {
            table: self.clone(),
            net,
        }))
    }
}

/// One connection counted against its client until dropped.
#[derive(Debug)]
pub(crate) struct ClientConn {
    table: Arc<PerClient>,
    net: ClientNet,
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.net) {
            count.open -= 1;
            count.warned = false;
            if count.open == 0 {
                open.remove(&self.net);
            }
        }
    }
}

/// A connection's place: held until the connection ends, and by a WebSocket tunnel until it
/// closes (it outlives the HTTP connection). The drain waits for every sender to drop, the
/// permit frees a place under `max_connections`, and the client's count goes down.
#[derive(Debug)]
pub struct ConnSlot {
    _drain: mpsc::Sender<()>,
    _permit: OwnedSemaphorePermit,
    _client: Option<ClientConn>,
}

impl ConnSlot {
    /// The slot of a connection the drain waits for, holding its place under `max_connections`
    /// and, when counted, under its client's limit.
    pub(crate) fn new(drain: mpsc::Sender<()>, permit: OwnedSemaphorePermit, client: Option<ClientConn>) -> Self {
        ConnSlot {
            _drain: drain,
            _permit: permit,
            _client: client,
        }
    }
}

/// Counts one open client connection in the metrics until dropped.
pub(crate) struct OpenConnection(Arc<Metrics>);

impl OpenConnection {
    pub(crate) fn count(metrics: &Arc<Metrics>) -> Self {
        metrics.open_connections.inc();
        OpenConnection(metrics.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

/// Requests in flight on one connection and when the last one ended: a connection is idle only
/// with nothing in flight, so a slow upload or a long wait for the upstream never counts.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    // Set by the first request; never cleared.
    begun: AtomicBool,
    last_end_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            begun: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.begun.store(true, Ordering::Release);
        InFlight(self.clone())
    }

    /// Resolves `timeout` after the connection opened if no request has begun by then; never
    /// otherwise.
    pub(crate) async fn no_first_request(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
        if self.begun.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves once the connection has had nothing in flight for `timeout`.
    pub(crate) async fn idle(&self, timeout: Duration) {
        loop {
            let wait = if self.in_flight.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                let idle =
                    Duration::from_millis(self.now_ms().saturating_sub(self.last_end_ms.load(Ordering::Acquire)));
                match timeout.checked_sub(idle) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Marks one request in flight until dropped (when its response body has ended).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_end_ms.store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
