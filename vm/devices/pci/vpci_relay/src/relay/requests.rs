//! The request table: guest requests forwarded to the host and waiting for its answer,
//! the memory of requests the relay answered itself (to recognise the host's late answer),
//! host requests forwarded to the guest, and the relay's transaction ids.
//!
//! Only requests the host still owes count against the live limit: a request the relay has
//! answered leaves the live table at once and is remembered, in a bounded first-in first-out
//! memory, only so that the host's late completion for it can be told from a wrong one.

use crate::save::{
    Check, MAX_SAVED_PAYLOAD, RestoreError, SavedAnsweredLocally, SavedHostRequest, SavedRequest,
    SavedRequestTable, ns,
};
use inspect::{Inspect, Node};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use vpci_protocol::{Message, MessageType, ProtocolVersion, Sender, WinSlot};

/// A guest request forwarded to the host (keyed by the relay's own transaction id).
#[derive(Clone, Debug, Hash)]
pub(crate) struct Forwarded {
    /// The guest's transaction id, for the answer.
    pub(crate) guest_txid: u64,
    /// The request, for a local answer and for what its completion means.
    pub(crate) request: Message,
    /// The function it names, if any.
    pub(crate) slot: Option<WinSlot>,
    /// When it was forwarded.
    pub(crate) sent_at: Duration,
}

/// What a host completion's transaction id matched, when it was no live request.
#[derive(Debug)]
pub(crate) enum Unmatched {
    /// A request the relay already answered itself.
    Late(MessageType),
    /// An id the relay issued and finished, not remembered as answered locally.
    Stale,
    /// An id the relay never issued.
    Unknown,
}

/// The table is full: the request is refused.
#[derive(Debug)]
pub(crate) struct Full(pub(crate) usize);

/// Guest requests at the host, remembered local answers, and host requests at the guest.
#[derive(Clone, Debug, Hash, Inspect)]
pub(crate) struct RequestTable {
    /// Sorted by id. A vector rather than a map: it holds a handful of entries, keeps its
    /// allocation when it empties (a map frees its node on every round trip), and is bounded
    /// by `live_limit`.
    #[inspect(with = "live_node")]
    live: Vec<(u64, Forwarded)>,
    live_limit: usize,
    #[inspect(rename = "answered_locally_remembered", with = "count")]
    answered: VecDeque<(u64, MessageType)>,
    answered_limit: usize,
    /// Host requests forwarded to the guest: relay id -> host id.
    #[inspect(rename = "host_requests_at_guest", with = "count")]
    host_requests: BTreeMap<u64, u64>,
    #[inspect(hex)]
    next_txid: u64,
}

impl RequestTable {
    pub(crate) fn new(live_limit: usize, answered_limit: usize) -> Self {
        Self {
            live: Vec::new(),
            live_limit,
            answered: VecDeque::new(),
            answered_limit,
            host_requests: BTreeMap::new(),
            next_txid: 1,
        }
    }

    fn alloc(&mut self) -> u64 {
        let id = self.next_txid;
        self.next_txid = self.next_txid.wrapping_add(1).max(1);
        id
    }

    /// Admits a guest request for forwarding; returns the relay's transaction id for it.
    pub(crate) fn admit(&mut self, fwd: Forwarded) -> Result<u64, Full> {
        if self.live.len() >= self.live_limit {
            return Err(Full(self.live_limit));
        }
        let id = self.alloc();
        // Ids only grow (until a wrap that 2^64 requests put out of reach), so this is a push.
        let at = self.live.partition_point(|(i, _)| *i < id);
        self.live.insert(at, (id, fwd));
        Ok(id)
    }

    fn take_live(&mut self, id: u64) -> Option<Forwarded> {
        let at = self.live.binary_search_by_key(&id, |(i, _)| *i).ok()?;
        Some(self.live.remove(at).1)
    }

    /// Matches a host completion's transaction id, taking a live request out of the table.
    pub(crate) fn complete(&mut self, id: u64) -> Result<Forwarded, Unmatched> {
        if let Some(fwd) = self.take_live(id) {
            return Ok(fwd);
        }
        if let Some(&(_, ty)) = self.answered.iter().find(|(a, _)| *a == id) {
            self.answered.retain(|(a, _)| *a != id);
            return Err(Unmatched::Late(ty));
        }
        if id != 0 && id < self.next_txid {
            Err(Unmatched::Stale)
        } else {
            Err(Unmatched::Unknown)
        }
    }

    /// Takes a live request out to answer it locally, remembering that it was.
    pub(crate) fn answer_locally(&mut self, id: u64) -> Option<Forwarded> {
        let fwd = self.take_live(id)?;
        if self.answered_limit > 0 {
            if self.answered.len() >= self.answered_limit {
                self.answered.pop_front();
            }
            self.answered.push_back((id, fwd.request.message_type()));
        }
        Some(fwd)
    }

    /// Takes a live request out because it never reached the host (nothing to remember).
    pub(crate) fn refused(&mut self, id: u64) -> Option<Forwarded> {
        self.take_live(id)
    }

    /// The live requests' ids, in order.
    pub(crate) fn live_ids(&self) -> Vec<u64> {
        self.live.iter().map(|(id, _)| *id).collect()
    }

    /// Live requests for functions `departed` says are gone that have waited `timeout`.
    pub(crate) fn stale(
        &self,
        now: Duration,
        timeout: Duration,
        departed: impl Fn(WinSlot) -> bool,
    ) -> Vec<u64> {
        self.live
            .iter()
            .filter(|(_, r)| {
                now >= r.sent_at.saturating_add(timeout) && r.slot.is_some_and(&departed)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// When the next request for a departed function will have waited `timeout`, after
    /// `now`.
    pub(crate) fn deadline(
        &self,
        now: Duration,
        timeout: Duration,
        departed: impl Fn(WinSlot) -> bool,
    ) -> Option<Duration> {
        self.live
            .iter()
            .map(|(_, r)| r)
            .filter(|r| r.slot.is_some_and(&departed))
            .map(|r| r.sent_at.saturating_add(timeout))
            .filter(|&t| t > now)
            .min()
    }

    /// Requests the host still owes.
    pub(crate) fn live_len(&self) -> usize {
        self.live.len()
    }

    /// Whether the host owes nothing.
    pub(crate) fn idle(&self) -> bool {
        self.live.is_empty()
    }

    /// Local answers remembered for late completions.
    pub(crate) fn remembered(&self) -> usize {
        self.answered.len()
    }

    /// Records a host request forwarded to the guest; `None` if the table is full.
    pub(crate) fn forward_host_request(&mut self, host_txid: u64) -> Option<u64> {
        if self.host_requests.len() >= self.live_limit {
            return None;
        }
        let id = self.alloc();
        self.host_requests.insert(id, host_txid);
        Some(id)
    }

    /// The host's id for the guest's completion of a forwarded host request.
    pub(crate) fn take_host_request(&mut self, id: u64) -> Option<u64> {
        self.host_requests.remove(&id)
    }

    /// Host requests the guest still owes.
    pub(crate) fn host_requests_len(&self) -> usize {
        self.host_requests.len()
    }
}

/// Live requests by id: the request, its function, the guest's id, when it was sent.
fn live_node(live: &[(u64, Forwarded)]) -> Node {
    Node::Dir(
        live.iter()
            .map(|(id, r)| {
                let node = Node::dir()
                    .field("request", &r.request.message_type().to_string())
                    .field("slot", &r.slot.map(|s| s.to_string()))
                    .hex("guest_txid", r.guest_txid)
                    .field("sent_at", &r.sent_at)
                    .build();
                (format!("{id:#x}"), node)
            })
            .collect(),
    )
}

/// How many entries a table holds.
fn count<'a, T>(table: &'a T) -> Node
where
    &'a T: IntoIterator,
{
    table.into_iter().count().inspect()
}

impl RequestTable {
    pub(crate) fn save(&self) -> SavedRequestTable {
        let Self {
            live,
            // The limits are the configuration's, restored from the new configuration.
            live_limit: _,
            answered,
            answered_limit: _,
            host_requests,
            next_txid,
        } = self;
        SavedRequestTable {
            live: live
                .iter()
                .map(|(id, r)| {
                    let Forwarded {
                        guest_txid,
                        request,
                        slot,
                        sent_at,
                    } = r;
                    SavedRequest {
                        id: *id,
                        guest_txid: *guest_txid,
                        request: vpci_protocol::encode(request),
                        slot: slot.map(WinSlot::raw),
                        sent_at_ns: ns(*sent_at),
                    }
                })
                .collect(),
            answered: answered
                .iter()
                .map(|(id, ty)| SavedAnsweredLocally {
                    id: *id,
                    message_type: ty.0,
                })
                .collect(),
            host_requests: host_requests
                .iter()
                .map(|(&id, &host_txid)| SavedHostRequest { id, host_txid })
                .collect(),
            next_txid: *next_txid,
        }
    }

    /// The table from its saved state, checked: within the configuration's bounds, every id
    /// issued (non-zero, below `next_txid`) and used once, every request a guest request the
    /// relay forwards with a completion, naming the slot it is saved with.
    pub(crate) fn restore(
        saved: &SavedRequestTable,
        check: &Check<'_>,
    ) -> Result<Self, RestoreError> {
        let SavedRequestTable {
            live,
            answered,
            host_requests,
            next_txid,
        } = saved;
        let limits = &check.config.limits;
        check.count("requests.live", live.len(), limits.max_outstanding_requests)?;
        check.count(
            "requests.host_requests",
            host_requests.len(),
            limits.max_outstanding_requests,
        )?;
        check.count(
            "requests.answered",
            answered.len(),
            limits.max_remembered_answers,
        )?;
        if *next_txid == 0 {
            return Err(RestoreError::BadTransaction {
                field: "requests.next_txid".into(),
                id: 0,
                why: "is zero",
            });
        }
        let mut table = Self::new(
            limits.max_outstanding_requests,
            limits.max_remembered_answers,
        );
        table.next_txid = *next_txid;
        let mut used = std::collections::BTreeSet::new();
        let mut issued = |field: &str, id: u64| {
            let why = if id == 0 {
                "is zero"
            } else if id >= *next_txid {
                "was never issued"
            } else if !used.insert(id) {
                "is used twice"
            } else {
                return Ok(());
            };
            Err(RestoreError::BadTransaction {
                field: field.into(),
                id,
                why,
            })
        };
        for (i, r) in live.iter().enumerate() {
            let SavedRequest {
                id,
                guest_txid,
                request,
                slot,
                sent_at_ns,
            } = r;
            let field = format!("requests.live[{i}]");
            issued(&field, *id)?;
            let bad = || RestoreError::BadRequest {
                field: field.clone(),
            };
            if request.len() > MAX_SAVED_PAYLOAD {
                return Err(bad());
            }
            // Decoded at the newest version: it was accepted at the version of its day.
            let message = vpci_protocol::decode(request, Sender::Guest, ProtocolVersion::V1_7)
                .map_err(|_| bad())?;
            if !vpci_protocol::gets_completion(message.message_type())
                || matches!(
                    message,
                    Message::EjectionComplete(_) | Message::QueryBusRelations(_)
                )
            {
                return Err(bad());
            }
            let slot = slot
                .map(|raw| crate::save::slot(format!("{field}.slot"), raw))
                .transpose()?;
            if slot != message.wslot() {
                return Err(bad());
            }
            let fwd = Forwarded {
                guest_txid: *guest_txid,
                request: message,
                slot,
                sent_at: check.time(format!("{field}.sent_at_ns"), *sent_at_ns)?,
            };
            table.live.push((*id, fwd));
        }
        table.live.sort_by_key(|(id, _)| *id);
        for (i, a) in answered.iter().enumerate() {
            let SavedAnsweredLocally { id, message_type } = a;
            issued(&format!("requests.answered[{i}]"), *id)?;
            table.answered.push_back((*id, MessageType(*message_type)));
        }
        for (i, h) in host_requests.iter().enumerate() {
            let SavedHostRequest { id, host_txid } = h;
            issued(&format!("requests.host_requests[{i}]"), *id)?;
            table.host_requests.insert(*id, *host_txid);
        }
        Ok(table)
    }
}
