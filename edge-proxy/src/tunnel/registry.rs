//! Live tunnel sessions and their pools of idle data streams.
//!
//! A session is one sidecar connection (one `Control` RPC). Sessions are
//! found by environment (to route visitors) and by id (to attach the data
//! streams the sidecar opens ahead of time).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tonic::Status;
use tunnel_proto::{edge_message, Drain, Drained, EdgeMessage, TunnelStats, WantStreams};
use tunnel_transport::DataStream;

use arc_swap::ArcSwap;

use crate::config::token::TokenHash;
use crate::config::EdgeConfig;
use crate::routing::preview::ServiceRef;
use crate::routing::rules::{HostPattern, RouteRule, RouteTable};
use crate::routing::upstream::Protocol;

/// Most idle streams a busy session is asked to keep open ahead.
pub const MAX_IDLE_TARGET: u32 = 256;

/// Why a visitor's request cannot be given a tunnel stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no route for this host")]
    NotFound,
    #[error("no tunnel is connected for environment {0:?}")]
    Unavailable(String),
}

/// The calling thread's id, without `thread::current()`'s reference count
/// traffic (asked on every request).
fn current_worker() -> ThreadId {
    thread_local!(static WORKER: ThreadId = std::thread::current().id());
    WORKER.with(|id| *id)
}

/// One connected sidecar session.
pub struct Session {
    pub id: String,
    pub cluster: String,
    pub environment: String,
    pub sidecar_name: String,
    pub token: TokenHash,
    /// The edge worker thread that serves this session's tunnel connection:
    /// visitors on that thread use it first (no hand-off between threads).
    pub worker: ThreadId,
    /// What the sidecar registered; replaced when it sends a new set
    /// (routes it discovers from Kubernetes).
    served: ArcSwap<Served>,
    idle: Mutex<VecDeque<DataStream>>,
    idle_ready: Notify,
    /// Idle streams wanted now: starts at the configured floor, doubles
    /// when a request had to wait for a stream, halves back when quiet.
    idle_target: AtomicU32,
    idle_floor: u32,
    /// A request waited for a stream since the last [`Session::adapt_idle`].
    starved: AtomicBool,
    want_pending: AtomicBool,
    draining: AtomicBool,
    /// Requests routed to this session and not yet finished.
    requests: AtomicU64,
    /// Draining or closed with nothing in flight: every stream left is idle
    /// and reads as ended ([`Session::is_retired`]).
    retired: AtomicBool,
    closed: AtomicBool,
    /// The edge's grace period is over: streams still in use read as ended
    /// ([`TunnelRegistry::end_streams`]).
    ending: AtomicBool,
    /// Wakes the streams waiting to read when `ending` is set.
    ending_now: Arc<Notify>,
    control: mpsc::Sender<Result<EdgeMessage, Status>>,
    /// Streams handed to visitors' connections over the session's life.
    pub streams_taken: AtomicU64,
    pub last_stats: Mutex<TunnelStats>,
    /// What the sidecar asked of visitors' access to its environment.
    pub requested: Requested,
    /// The sidecar's release, as it said in Hello.
    pub sidecar_version: String,
    /// When the session came up.
    pub since: std::time::SystemTime,
}

/// A stricter access level a sidecar asked for its environment, and the
/// owner for `personal`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    pub level: Option<crate::auth::Level>,
    pub owner: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("environment", &self.environment)
            .finish()
    }
}

/// What a session serves: the routes its sidecar registered, and the
/// custom-domain rules it claimed that the edge took.
#[derive(Debug, Default)]
pub struct Served {
    /// Service → its ports and their protocols (looked up by `&str` on
    /// every request, without allocating; foldhash, not SipHash: the
    /// sidecar chose the keys, a visitor only looks up).
    by_service: foldhash::HashMap<String, Vec<(u16, Protocol)>>,
    claims: Vec<Claim>,
}

impl Served {
    pub fn new(routes: HashMap<(String, u16), Protocol>, claims: Vec<Claim>) -> Self {
        let by_service = routes.into_iter().fold(
            foldhash::HashMap::default(),
            |mut by_service: foldhash::HashMap<_, Vec<_>>, ((service, port), protocol)| {
                by_service
                    .entry(service)
                    .or_default()
                    .push((port, protocol));
                by_service
            },
        );
        Self { by_service, claims }
    }
}

/// A custom-domain rule a sidecar claimed (from an Ingress) within its
/// cluster's `domains`, for one of its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub host: HostPattern,
    pub path: String,
    pub exact_path: bool,
    pub service: String,
    pub port: u16,
    /// Where the sidecar found it ("ingress team1/web").
    pub source: String,
}

/// A session's pool could not give a stream in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TakeError {
    #[error("the tunnel session closed")]
    Closed,
    #[error("no data stream became available in time")]
    Timeout,
}

impl Session {
    pub fn new(
        cluster: String,
        environment: String,
        sidecar_name: String,
        token: TokenHash,
        served: Served,
        idle_target: u32,
        control: mpsc::Sender<Result<EdgeMessage, Status>>,
    ) -> Self {
        Self {
            id: format!("{:032x}", rand::random::<u128>()),
            cluster,
            environment,
            sidecar_name,
            token,
            worker: current_worker(),
            served: ArcSwap::from_pointee(served),
            idle: Mutex::new(VecDeque::new()),
            idle_ready: Notify::new(),
            idle_target: AtomicU32::new(idle_target),
            idle_floor: idle_target,
            starved: AtomicBool::new(false),
            want_pending: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            ending: AtomicBool::new(false),
            ending_now: Arc::default(),
            control,
            streams_taken: AtomicU64::new(0),
            last_stats: Mutex::new(TunnelStats::default()),
            requested: Requested::default(),
            sidecar_version: String::new(),
            since: std::time::SystemTime::now(),
        }
    }

    pub fn serves(&self, service: &str, port: u16) -> bool {
        self.protocol(service, port).is_some()
    }

    /// How the sidecar said to speak to a service it registered.
    pub fn protocol(&self, service: &str, port: u16) -> Option<Protocol> {
        self.served
            .load()
            .by_service
            .get(service)?
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, protocol)| protocol.clone())
    }

    /// The services and ports the sidecar registered, sorted.
    pub fn registered(&self) -> Vec<(String, u16)> {
        let mut all: Vec<_> = self
            .served
            .load()
            .by_service
            .iter()
            .flat_map(|(service, ports)| {
                ports.iter().map(move |(port, _)| (service.clone(), *port))
            })
            .collect();
        all.sort_unstable();
        all
    }

    /// Asks the sidecar to move this session's work to a new one (an
    /// operator's drain): nothing new is routed here, and the sidecar
    /// reconnects at once while the requests in flight finish.
    pub fn drain(&self, reason: &str) {
        // Drain before the Drained that retiring an idle session sends.
        self.try_send(edge_message::Kind::Drain(Drain {
            reason: reason.into(),
        }));
        self.set_draining();
    }

    pub fn is_usable(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.closed.load(Ordering::Relaxed)
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().len()
    }

    /// Most idle streams a session may park at the edge.
    pub fn idle_limit(&self) -> usize {
        2 * MAX_IDLE_TARGET as usize
    }

    /// Idle streams this session is asked to keep now.
    pub fn idle_target(&self) -> u32 {
        self.idle_target.load(Ordering::Relaxed)
    }

    /// Called every heartbeat. A session whose requests waited for streams
    /// (its target already doubled then, up to [`MAX_IDLE_TARGET`]) keeps
    /// its target; a quiet one returns towards its floor and closes the idle
    /// streams beyond twice its target, so idle tunnels stay cheap.
    pub fn adapt_idle(&self) {
        if self.starved.swap(false, Ordering::Relaxed) {
            return;
        }
        let new = (self.idle_target() / 2).max(self.idle_floor);
        self.idle_target.store(new, Ordering::Relaxed);
        let mut idle = self.idle.lock().unwrap();
        while idle.len() > 2 * new as usize {
            idle.pop_back(); // dropped: the sidecar sees the stream end
        }
    }

    /// Parks a stream the sidecar opened. Gives it back if the pool is full
    /// or the session is gone.
    pub fn add_idle(&self, stream: DataStream) -> Result<(), Box<DataStream>> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Box::new(stream));
        }
        {
            let mut idle = self.idle.lock().unwrap();
            if idle.len() >= self.idle_limit() {
                return Err(Box::new(stream));
            }
            idle.push_back(stream);
        }
        self.want_pending.store(false, Ordering::Relaxed);
        self.idle_ready.notify_one();
        Ok(())
    }

    /// Takes an idle stream, waiting up to `timeout` (and asking the sidecar
    /// for more) when the pool is empty.
    pub async fn take_stream(&self, timeout: Duration) -> Result<DataStream, TakeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = self.idle_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(stream) = self.pop_live() {
                self.streams_taken.fetch_add(1, Ordering::Relaxed);
                return Ok(stream);
            }
            if self.closed.load(Ordering::Relaxed) {
                return Err(TakeError::Closed);
            }
            if !self.starved.swap(true, Ordering::Relaxed) {
                // First wait since the last heartbeat: grow now, not later.
                let target = self.idle_target();
                self.idle_target
                    .store((target * 2).min(MAX_IDLE_TARGET), Ordering::Relaxed);
            }
            self.ask_for_streams();
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                return Err(TakeError::Timeout);
            }
        }
    }

    fn pop_live(&self) -> Option<DataStream> {
        let mut idle = self.idle.lock().unwrap();
        let stream = loop {
            let s = idle.pop_front()?;
            if !s.is_closed() {
                break s;
            }
        };
        // Running low: ask for a refill before the pool runs dry (the
        // sidecar also replaces each stream taken).
        let left = idle.len();
        drop(idle);
        if left < (self.idle_target() as usize / 2).max(1) {
            self.ask_for_streams();
        }
        Some(stream)
    }

    fn ask_for_streams(&self) {
        if self.want_pending.swap(true, Ordering::Relaxed) {
            return;
        }
        let missing = (self.idle_target() as usize).saturating_sub(self.idle_count());
        let want = edge_message::Kind::WantStreams(WantStreams {
            count: missing.max(1) as u32,
        });
        if !self.try_send(want) {
            self.want_pending.store(false, Ordering::Relaxed);
        }
    }

    /// Sends a control message to the sidecar now, unless its channel is
    /// full or closed (`false`).
    fn try_send(&self, message: edge_message::Kind) -> bool {
        self.control
            .try_send(Ok(EdgeMessage {
                kind: Some(message),
            }))
            .is_ok()
    }

    /// Sends a control message to the sidecar.
    pub async fn send(&self, message: edge_message::Kind) -> bool {
        self.control
            .send(Ok(EdgeMessage {
                kind: Some(message),
            }))
            .await
            .is_ok()
    }

    /// The sidecar is leaving: no new request is routed here, and once
    /// the requests in flight have finished the session retires.
    pub fn set_draining(&self) {
        // SeqCst with `lease`: either a new lease sees the flag, or this
        // sees its request counted.
        self.draining.store(true, Ordering::SeqCst);
        if self.requests.load(Ordering::SeqCst) == 0 {
            self.retire();
        }
    }

    /// Counts a request routed here until the lease drops; `None` if the
    /// session started draining meanwhile.
    fn lease(self: &Arc<Self>) -> Option<Lease> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let lease = Lease(self.clone());
        (!self.is_leaving()).then_some(lease)
    }

    /// Requests routed here and not yet finished.
    pub fn requests_in_flight(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Nothing will use this session's streams again: the ones pooled at
    /// the edge read as ended (Pingora's pool closes them within its sweep
    /// interval) and the sidecar is told ([`edge_message::Kind::Drained`]),
    /// so neither side waits for them to time out.
    fn retire(&self) {
        if self.retired.swap(true, Ordering::SeqCst) {
            return;
        }
        self.idle.lock().unwrap().clear();
        // The control channel is rarely full; if it is, the sidecar's own
        // grace period ends its wait instead.
        self.try_send(edge_message::Kind::Drained(Drained {}));
    }

    /// Resolves when the edge ends the streams still in use (its grace
    /// period is over), even if first polled after that.
    pub fn streams_ending(&self) -> tokio::sync::futures::OwnedNotified {
        self.ending_now.clone().notified_owned()
    }

    /// Whether the streams in use were ended by the edge.
    pub fn streams_ended(&self) -> bool {
        self.ending.load(Ordering::Relaxed)
    }

    /// Draining or closed, with no request in flight.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    fn is_leaving(&self) -> bool {
        self.draining.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst)
    }

    /// Ends the session from the edge's side: the control stream fails with
    /// PERMISSION_DENIED and the sidecar sees why.
    fn revoke(&self) {
        let _ = self.control.try_send(Err(Status::permission_denied(
            "this sidecar's token was revoked",
        )));
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.idle.lock().unwrap().clear();
        self.idle_ready.notify_waiters();
        if self.requests.load(Ordering::SeqCst) == 0 {
            self.retire();
        }
    }
}

/// A request routed to a session, counted until it finishes (dropped with
/// the request's context): a draining session's sidecar learns from the
/// count when nothing is left in flight.
pub struct Lease(Arc<Session>);

impl std::ops::Deref for Lease {
    type Target = Arc<Session>;

    fn deref(&self) -> &Arc<Session> {
        &self.0
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.0.requests.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.is_leaving() {
            self.0.retire();
        }
    }
}

/// Who may register which environments: derived from the config.
#[derive(Debug, Default, Clone)]
pub struct Authorizations {
    pub by_token: HashMap<TokenHash, ClusterGrant>,
    pub known_environments: HashSet<String>,
}

impl Authorizations {
    /// What each cluster's token grants, from the config.
    pub fn from_config(config: &EdgeConfig) -> Self {
        let mut auth = Self::default();
        for c in &config.clusters {
            auth.known_environments
                .extend(c.environments.iter().cloned());
            let grant = ClusterGrant {
                cluster: c.name.clone(),
                environments: c.environments.clone(),
                domains: c.domains.clone(),
                client_ca: c.client_ca.clone().map(Arc::new),
            };
            for token in &c.tokens {
                auth.by_token.insert(token.clone(), grant.clone());
            }
        }
        auth
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClusterGrant {
    pub cluster: String,
    pub environments: Vec<String>,
    /// The custom domains its sidecars may claim (`clusters[].domains`).
    pub domains: Vec<String>,
    /// With mutual TLS: the CA the sidecar's client certificate must chain to.
    pub client_ca: Option<Arc<crate::tls::ClientCa>>,
}

impl ClusterGrant {
    /// Whether a rule for `host` stays within this cluster's domains.
    pub fn owns(&self, host: &HostPattern) -> bool {
        self.domains
            .iter()
            .any(|d| crate::config::within(host.name(), d))
    }
}

#[derive(Default)]
struct Sessions {
    /// Looked up on every request (foldhash, as `Session::routes`).
    by_environment: foldhash::HashMap<String, Vec<Arc<Session>>>,
    by_id: HashMap<String, Arc<Session>>,
}

/// All live sessions, plus who may register what.
#[derive(Default)]
pub struct TunnelRegistry {
    sessions: RwLock<Sessions>,
    auth: RwLock<Arc<Authorizations>>,
    next: AtomicUsize,
    /// Poked when an environment gains its first session or loses its last.
    held_changed: Arc<Notify>,
    /// Wakes every request waiting for a session ([`Self::session_arrived`]).
    arrived: Notify,
    /// Requests waiting for a session now.
    waiting: AtomicUsize,
    /// This edge is shutting down: no new sessions.
    leaving: AtomicBool,
    /// The edge's replicas, told to every session.
    replicas: super::replicas::ReplicaSet,
    /// The custom-domain rules sessions claimed, tried after the YAML's.
    claimed: ArcSwap<RouteTable>,
}

impl TunnelRegistry {
    pub fn new(auth: Authorizations) -> Self {
        Self {
            auth: RwLock::new(Arc::new(auth)),
            ..Default::default()
        }
    }

    /// From now on sidecars are turned away (they reconnect to another
    /// replica) and every session is asked to drain: its sidecar opens a
    /// new session elsewhere while this one's requests finish.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        for session in self.all() {
            session
                .send(edge_message::Kind::Drain(Drain {
                    reason: "edge shutting down".into(),
                }))
                .await;
        }
    }

    /// The replicas sidecars are told of.
    pub fn replicas(&self) -> &super::replicas::ReplicaSet {
        &self.replicas
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Relaxed)
    }

    /// The grace period is over: every stream still in use reads as ended,
    /// so the requests on them finish as the edge's phases decide (a
    /// WebSocket gets a Close frame, a gRPC call its status) rather than
    /// being cut when the process exits.
    pub fn end_streams(&self) {
        for session in self.all() {
            session.ending.store(true, Ordering::Relaxed);
            session.ending_now.notify_waiters();
        }
    }

    pub fn authorizations(&self) -> Arc<Authorizations> {
        self.auth.read().unwrap().clone()
    }

    /// The config changed: what tokens grant, and which claims stand.
    pub fn set_authorizations(&self, auth: Authorizations) {
        *self.auth.write().unwrap() = Arc::new(auth);
        // Written, not read: see `serve`.
        #[allow(clippy::readonly_write_lock)]
        let sessions = self.sessions.write().unwrap();
        self.reclaim(&sessions);
    }

    /// Rebuilds the table of claimed rules.
    fn reclaim(&self, sessions: &Sessions) {
        let table = claimed_rules(sessions, &self.authorizations());
        self.claimed.store(Arc::new(table));
    }

    /// Closes the sessions whose token no longer grants their environment.
    /// Returns how many.
    pub fn revoke_unauthorized(&self) -> usize {
        let auth = self.authorizations();
        let revoked: Vec<_> = self
            .all()
            .into_iter()
            .filter(|s| {
                !auth
                    .by_token
                    .get(&s.token)
                    .is_some_and(|g| g.environments.contains(&s.environment))
            })
            .collect();
        for session in &revoked {
            tracing::warn!(session = %session.id, environment = %session.environment, "token revoked; closing tunnel");
            session.revoke();
            self.remove(session);
        }
        revoked.len()
    }

    pub fn insert(&self, session: Arc<Session>) {
        let mut s = self.sessions.write().unwrap();
        let list = s
            .by_environment
            .entry(session.environment.clone())
            .or_default();
        list.push(session.clone());
        if list.len() == 1 {
            self.held_changed.notify_one();
        }
        let claims = !session.served.load().claims.is_empty();
        s.by_id.insert(session.id.clone(), session);
        if claims {
            self.reclaim(&s);
        }
        drop(s);
        self.arrived.notify_waiters();
    }

    /// Resolves when a session registers after this was called (and the
    /// future was first polled or enabled).
    pub fn session_arrived(&self) -> tokio::sync::futures::Notified<'_> {
        self.arrived.notified()
    }

    /// Counts a request waiting for a session until the guard drops.
    pub fn wait_for_session(&self) -> impl Drop + '_ {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// Requests waiting for a session now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn remove(&self, session: &Arc<Session>) {
        session.close();
        let mut s = self.sessions.write().unwrap();
        if s.by_id.remove(&session.id).is_none() {
            return;
        }
        if let Some(list) = s.by_environment.get_mut(&session.environment) {
            list.retain(|other| !Arc::ptr_eq(other, session));
            if list.is_empty() {
                s.by_environment.remove(&session.environment);
                self.held_changed.notify_one();
            }
        }
        if !session.served.load().claims.is_empty() {
            self.reclaim(&s);
        }
    }

    /// Replaces what a session serves (its sidecar sent a new set).
    pub fn serve(&self, session: &Arc<Session>, served: Served) {
        // Written, not read: tables are rebuilt one at a time, so a table
        // built from an older state is never stored after a newer one.
        #[allow(clippy::readonly_write_lock)]
        let s = self.sessions.write().unwrap();
        let had_claims = !session.served.swap(Arc::new(served)).claims.is_empty();
        if (had_claims || !session.served.load().claims.is_empty())
            && s.by_id.contains_key(&session.id)
        {
            self.reclaim(&s);
        }
    }

    /// The custom-domain rules sidecars claimed, as a route table.
    pub fn claimed(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.claimed.load()
    }

    /// The environments this edge holds a tunnel of.
    pub fn environments(&self) -> Vec<String> {
        let sessions = self.sessions.read().unwrap();
        sessions.by_environment.keys().cloned().collect()
    }

    /// Notified (one waiter, permit kept) when [`Self::environments`]
    /// changes.
    pub fn environments_changed(&self) -> Arc<Notify> {
        self.held_changed.clone()
    }

    /// Round robin over `count` sessions. A session may have started
    /// draining since it was counted: then the first still usable one.
    fn pick<'a, I: Iterator<Item = &'a Arc<Session>>>(
        &self,
        count: usize,
        sessions: impl Fn() -> I,
    ) -> Option<&'a Arc<Session>> {
        if count == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % count;
        sessions().nth(i).or_else(|| sessions().next())
    }

    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.read().unwrap().by_id.get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions
            .read()
            .unwrap()
            .by_id
            .values()
            .cloned()
            .collect()
    }

    /// Picks a session for a preview URL: round robin over the usable
    /// sessions of its environment that registered the service and port,
    /// those served by the calling worker thread first.
    pub fn route(&self, url: &ServiceRef) -> Result<Lease, RouteError> {
        let sessions = self.sessions.read().unwrap();
        let in_environment = sessions.by_environment.get(&url.environment);
        let candidates = || {
            in_environment
                .into_iter()
                .flatten()
                .filter(|s| s.serves(&url.service, url.port))
        };
        let here = current_worker();
        let usable = || candidates().filter(|s| s.is_usable());
        // One pass to count, and a second to pick only where there is a
        // choice (this runs on every request; most have one session).
        let (mut n_usable, mut n_local) = (0, 0);
        let (mut first_usable, mut first_local) = (None, None);
        for s in usable() {
            n_usable += 1;
            first_usable.get_or_insert(s);
            if s.worker == here {
                n_local += 1;
                first_local.get_or_insert(s);
            }
        }
        let picked = match (n_local, n_usable) {
            (1, _) => first_local,
            (0, 1) => first_usable,
            (0, n) => self.pick(n, usable),
            (n, _) => self.pick(n, || usable().filter(|s| s.worker == here)),
        };
        // Started draining since it was picked (rare): the next usable one.
        if let Some(lease) = picked
            .and_then(|s| s.lease())
            .or_else(|| usable().find_map(|s| s.lease()))
        {
            return Ok(lease);
        }
        let environment_known = in_environment.is_some()
            || self
                .auth
                .read()
                .unwrap()
                .known_environments
                .contains(&url.environment);
        if candidates().next().is_some() || (environment_known && in_environment.is_none()) {
            Err(RouteError::Unavailable(url.environment.clone()))
        } else {
            Err(RouteError::NotFound)
        }
    }
}

/// Every live session's claims as one table, ordered as Ingress
/// controllers order them: exact hosts before wildcards, then longer paths
/// first, an exact path before a prefix of the same length. Where two
/// sessions claim the same host and path, the one up longer keeps it.
/// Claims outside the domains their token's grant has now are left out (a
/// reload narrowed them).
fn claimed_rules(sessions: &Sessions, auth: &Authorizations) -> RouteTable {
    let mut all: Vec<(&Arc<Session>, Claim)> = Vec::new();
    for session in sessions.by_id.values() {
        let Some(grant) = auth.by_token.get(&session.token) else {
            continue;
        };
        let served = session.served.load();
        all.extend(
            served
                .claims
                .iter()
                .filter(|c| grant.owns(&c.host))
                .map(|c| (session, c.clone())),
        );
    }
    all.sort_by(|(a, x), (b, y)| {
        let wildcard = |c: &Claim| matches!(c.host, HostPattern::Wildcard(_));
        (
            wildcard(x),
            std::cmp::Reverse(x.path.len()),
            !x.exact_path,
            x.host.name(),
            &x.path,
        )
            .cmp(&(
                wildcard(y),
                std::cmp::Reverse(y.path.len()),
                !y.exact_path,
                y.host.name(),
                &y.path,
            ))
            .then(a.since.cmp(&b.since))
            .then(a.id.cmp(&b.id))
    });
    all.dedup_by(|(_, later), (_, first)| {
        (&later.host, &later.path, later.exact_path) == (&first.host, &first.path, first.exact_path)
    });
    let rules = all
        .into_iter()
        .map(|(session, claim)| {
            let target = ServiceRef {
                service: claim.service,
                port: claim.port,
                environment: session.environment.clone(),
            };
            RouteRule::claimed(
                claim.host,
                claim.path,
                claim.exact_path,
                target,
                claim.source,
            )
        })
        .collect();
    RouteTable::new(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(env: &str, routes: &[(&str, u16)]) -> Arc<Session> {
        session_and_control(env, routes).0
    }

    /// A session, and what the edge sends its sidecar.
    fn session_and_control(
        env: &str,
        routes: &[(&str, u16)],
    ) -> (Arc<Session>, mpsc::Receiver<Result<EdgeMessage, Status>>) {
        let (tx, rx) = mpsc::channel(4);
        let session = Session::new(
            "c".into(),
            env.into(),
            "s".into(),
            TokenHash::of("t"),
            Served::new(
                routes
                    .iter()
                    .map(|(s, p)| ((s.to_string(), *p), Protocol::Http1))
                    .collect(),
                Vec::new(),
            ),
            4,
            tx,
        );
        (Arc::new(session), rx)
    }

    fn url(service: &str, port: u16, env: &str) -> ServiceRef {
        ServiceRef {
            service: service.into(),
            port,
            environment: env.into(),
        }
    }

    fn registry() -> TunnelRegistry {
        TunnelRegistry::new(Authorizations {
            known_environments: ["demo".to_string(), "idle".to_string()].into(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn busy_sessions_keep_more_streams_ahead_and_quiet_ones_fewer() {
        let (s, mut control) = session_and_control("demo", &[]);
        // A request finds the pool empty: the target doubles and the
        // sidecar is asked for the missing streams.
        let taken = s.take_stream(Duration::from_millis(10)).await;
        assert_eq!(taken.err(), Some(TakeError::Timeout));
        assert_eq!(s.idle_target(), 8);
        let want = control.try_recv().unwrap().unwrap();
        assert!(matches!(
            want.kind,
            Some(edge_message::Kind::WantStreams(WantStreams { count: 8 }))
        ));
        // A heartbeat after the wait keeps the target; quiet ones halve it
        // back to the configured floor, never below.
        s.adapt_idle();
        assert_eq!(s.idle_target(), 8);
        s.adapt_idle();
        assert_eq!(s.idle_target(), 4);
        s.adapt_idle();
        assert_eq!(s.idle_target(), 4);
    }

    #[test]
    fn routes_to_a_session_serving_the_url() {
        let r = registry();
        let s = session("demo", &[("web", 80)]);
        r.insert(s.clone());
        assert!(Arc::ptr_eq(&r.route(&url("web", 80, "demo")).unwrap(), &s));
    }

    #[test]
    fn known_environment_without_tunnel_is_unavailable() {
        let r = registry();
        assert_eq!(
            r.route(&url("web", 80, "idle")).err(),
            Some(RouteError::Unavailable("idle".into()))
        );
        assert_eq!(
            r.route(&url("web", 80, "nope")).err(),
            Some(RouteError::NotFound)
        );
    }

    /// A draining session retires once its last request ends: its streams
    /// read as ended from then on, and the sidecar hears `Drained` once.
    #[test]
    fn a_draining_session_retires_when_its_last_request_ends() {
        let r = registry();
        let (s, mut control) = session_and_control("demo", &[("web", 80)]);
        r.insert(s.clone());
        let (first, second) = (
            r.route(&url("web", 80, "demo")).unwrap(),
            r.route(&url("web", 80, "demo")).unwrap(),
        );
        assert_eq!(s.requests_in_flight(), 2);
        s.set_draining();
        assert!(r.route(&url("web", 80, "demo")).is_err());
        drop(first);
        assert!(!s.is_retired() && control.try_recv().is_err());
        drop(second);
        assert!(s.is_retired());
        let told = control.try_recv().unwrap().unwrap();
        assert!(matches!(told.kind, Some(edge_message::Kind::Drained(_))));
        // Closing later says nothing more.
        r.remove(&s);
        assert!(control.try_recv().is_err());

        // A session closed with nothing in flight retires at once.
        let (quiet, mut control) = session_and_control("demo", &[]);
        r.insert(quiet.clone());
        r.remove(&quiet);
        assert!(quiet.is_retired());
        assert!(control.try_recv().is_ok());
    }

    #[test]
    fn unregistered_service_is_not_found_and_draining_is_unavailable() {
        let r = registry();
        let s = session("demo", &[("web", 80)]);
        r.insert(s.clone());
        assert_eq!(
            r.route(&url("api", 80, "demo")).err(),
            Some(RouteError::NotFound)
        );
        s.set_draining();
        assert_eq!(
            r.route(&url("web", 80, "demo")).err(),
            Some(RouteError::Unavailable("demo".into()))
        );
        r.remove(&s);
        assert_eq!(
            r.route(&url("web", 80, "demo")).err(),
            Some(RouteError::Unavailable("demo".into()))
        );
    }

    #[test]
    fn round_robins_between_sessions() {
        let r = registry();
        let a = session("demo", &[("web", 80)]);
        let b = session("demo", &[("web", 80)]);
        r.insert(a.clone());
        r.insert(b.clone());
        let picks: Vec<_> = (0..4)
            .map(|_| r.route(&url("web", 80, "demo")).unwrap().id.clone())
            .collect();
        assert_ne!(picks[0], picks[1]);
        assert_eq!(picks[0], picks[2]);
    }

    #[test]
    fn prefers_sessions_served_by_the_calling_worker() {
        let r = Arc::new(registry());
        let here = session("demo", &[("web", 80)]);
        // Sessions remember the thread that serves their connection.
        let there = std::thread::spawn(|| session("demo", &[("web", 80)]))
            .join()
            .unwrap();
        assert_ne!(here.worker, there.worker);
        r.insert(there.clone());
        r.insert(here.clone());
        for _ in 0..4 {
            assert!(Arc::ptr_eq(
                &r.route(&url("web", 80, "demo")).unwrap(),
                &here
            ));
        }
        // Another worker gets its own, or any usable session if it has none.
        let r2 = r.clone();
        let from_elsewhere = std::thread::spawn(move || {
            (0..4)
                .map(|_| r2.route(&url("web", 80, "demo")).unwrap().id.clone())
                .collect::<HashSet<_>>()
        })
        .join()
        .unwrap();
        assert_eq!(
            from_elsewhere.len(),
            2,
            "no local session: round robin over all"
        );
        // A draining local session is passed over.
        here.set_draining();
        assert!(Arc::ptr_eq(
            &r.route(&url("web", 80, "demo")).unwrap(),
            &there
        ));
    }

    #[tokio::test]
    async fn take_times_out_and_reports_closed() {
        let s = session("demo", &[]);
        assert_eq!(
            s.take_stream(Duration::from_millis(20)).await.err(),
            Some(TakeError::Timeout)
        );
        s.close();
        assert_eq!(
            s.take_stream(Duration::from_millis(20)).await.err(),
            Some(TakeError::Closed)
        );
    }

    fn claim(host: &str, path: &str, exact_path: bool, service: &str) -> Claim {
        Claim {
            host: crate::config::parse_host_pattern(host).unwrap(),
            path: path.into(),
            exact_path,
            service: service.into(),
            port: 80,
            source: format!("ingress team1/{service}"),
        }
    }

    /// What the test sessions' token grants: `domain` and the names under it.
    fn domains(domain: &str) -> Authorizations {
        let grant = ClusterGrant {
            cluster: "c".into(),
            domains: vec![domain.into()],
            ..Default::default()
        };
        Authorizations {
            by_token: [(TokenHash::of("t"), grant)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn claimed_rules_follow_ingress_precedence_and_the_clusters_domains() {
        let r = TunnelRegistry::new(domains("example.com"));
        let s = session(
            "team1",
            &[("web", 80), ("api", 80), ("login", 80), ("wild", 80)],
        );
        r.serve(
            &s,
            Served::new(
                Default::default(),
                vec![
                    claim("*.example.com", "/", false, "wild"),
                    claim("app.example.com", "/", false, "web"),
                    claim("app.example.com", "/api", false, "api"),
                    claim("app.example.com", "/login", true, "login"),
                ],
            ),
        );
        assert!(r.claimed().is_empty(), "not yet a live session");
        r.insert(s.clone());
        let pick = |host: &str, path: &str| {
            r.claimed()
                .resolve(host, path)
                .map(|rule| (rule.target.service.clone(), rule.target.environment.clone()))
        };
        let to = |service: &str| Some((service.to_string(), "team1".to_string()));
        assert_eq!(
            pick("app.example.com", "/api/v1"),
            to("api"),
            "the longer path"
        );
        assert_eq!(pick("app.example.com", "/login"), to("login"));
        assert_eq!(
            pick("app.example.com", "/login/x"),
            to("web"),
            "exact is exact"
        );
        assert_eq!(
            pick("app.example.com", "/"),
            to("web"),
            "the exact host first"
        );
        assert_eq!(pick("x.example.com", "/"), to("wild"));
        assert!(r.claimed().serves("app.example.com"));

        // A second session claiming the same host and path does not take it.
        let later = session("team2", &[("other", 80)]);
        r.serve(
            &later,
            Served::new(
                Default::default(),
                vec![claim("app.example.com", "/", false, "other")],
            ),
        );
        r.insert(later.clone());
        assert_eq!(pick("app.example.com", "/"), to("web"));
        // Gone with its session.
        r.remove(&s);
        assert_eq!(
            pick("app.example.com", "/"),
            Some(("other".into(), "team2".into()))
        );
        assert_eq!(pick("x.example.com", "/"), None);
        // A reload that narrows the cluster's domains takes the claims away.
        r.set_authorizations(domains("other.example.com"));
        assert!(r.claimed().is_empty());
    }
}
