//! Request/response matching: transaction ids, outstanding requests, completions.
//!
//! [`Transactions`] is the sans-IO core: plain methods, no I/O, no waiting, so the relay's
//! state machine and the model checker can use it directly. [`AsyncTransactions`] puts a
//! oneshot channel behind each request for code that wants to `await` its response.
//!
//! A completion is matched by its transaction id. One that names an id that was never issued
//! ([`TransactionError::Unknown`]) or whose request was already completed or cancelled
//! ([`TransactionError::AlreadyCompleted`]) is a typed error: the peer is wrong, and the caller
//! decides what that costs it.

use crate::channel::{Channel, ChannelError, ChannelExt, EndReason};
use crate::packet::Packet;
use futures::channel::oneshot;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use thiserror::Error;

/// Errors of transaction bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TransactionError {
    /// Starting a request would exceed the bound on outstanding requests.
    #[error("too many outstanding requests (limit {limit})")]
    TooManyOutstanding {
        /// The configured bound.
        limit: usize,
    },
    /// A completion names an id that was never issued.
    #[error("completion for unknown transaction id {id:#x}")]
    Unknown {
        /// The id the completion carried.
        id: u64,
    },
    /// A completion names a request that was already completed or cancelled.
    #[error("completion for already completed transaction id {id:#x}")]
    AlreadyCompleted {
        /// The id the completion carried.
        id: u64,
    },
    /// The transaction table was closed; no new request can start.
    #[error("transactions ended: {0:?}")]
    Ended(EndReason),
    /// Every transaction id has been used.
    #[error("transaction ids exhausted")]
    IdsExhausted,
}

/// Configuration of a transaction table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransactionConfig {
    /// The most requests that may be outstanding at once (at least 1).
    pub max_outstanding: usize,
    /// The first id to issue; ids increase by one from there. Choose different ranges for
    /// different tables that share a channel so their completions cannot be confused.
    pub first_id: u64,
}

impl Default for TransactionConfig {
    fn default() -> Self {
        Self {
            max_outstanding: 256,
            first_id: 1,
        }
    }
}

/// The sans-IO transaction table: allocates ids and matches completions to requests.
///
/// `T` is whatever the caller wants back when the request completes (the request's kind, a
/// waiter, a slot number). Outstanding requests are kept in id order, so [`close`](Self::close)
/// reports them deterministically.
#[derive(Debug)]
pub struct Transactions<T> {
    config: TransactionConfig,
    next_id: u64,
    outstanding: BTreeMap<u64, T>,
    ended: Option<EndReason>,
}

impl<T> Transactions<T> {
    /// An empty table.
    pub fn new(config: TransactionConfig) -> Self {
        Self {
            config: TransactionConfig {
                max_outstanding: config.max_outstanding.max(1),
                ..config
            },
            next_id: config.first_id,
            outstanding: BTreeMap::new(),
            ended: None,
        }
    }

    /// Starts a request: records `context` and returns the id to send it with.
    pub fn begin(&mut self, context: T) -> Result<u64, TransactionError> {
        if let Some(reason) = self.ended {
            return Err(TransactionError::Ended(reason));
        }
        if self.outstanding.len() >= self.config.max_outstanding {
            return Err(TransactionError::TooManyOutstanding {
                limit: self.config.max_outstanding,
            });
        }
        let id = self.next_id;
        self.next_id = id.checked_add(1).ok_or(TransactionError::IdsExhausted)?;
        self.outstanding.insert(id, context);
        Ok(id)
    }

    /// Matches a completion carrying `id` and returns the request's context.
    pub fn complete(&mut self, id: u64) -> Result<T, TransactionError> {
        if let Some(context) = self.outstanding.remove(&id) {
            return Ok(context);
        }
        if (self.config.first_id..self.next_id).contains(&id) {
            Err(TransactionError::AlreadyCompleted { id })
        } else {
            Err(TransactionError::Unknown { id })
        }
    }

    /// Forgets an outstanding request (its send failed, or its caller gave up). A later
    /// completion for it reads as [`TransactionError::AlreadyCompleted`].
    pub fn cancel(&mut self, id: u64) -> Option<T> {
        self.outstanding.remove(&id)
    }

    /// Whether `id` is outstanding.
    pub fn is_outstanding(&self, id: u64) -> bool {
        self.outstanding.contains_key(&id)
    }

    /// The number of outstanding requests.
    pub fn len(&self) -> usize {
        self.outstanding.len()
    }

    /// Whether no request is outstanding.
    pub fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// The configured bound on outstanding requests.
    pub fn max_outstanding(&self) -> usize {
        self.config.max_outstanding
    }

    /// Why the table ended, if it did.
    pub fn ended(&self) -> Option<EndReason> {
        self.ended
    }

    /// Ends the table: no request can start any more, and every outstanding request is
    /// returned, in id order, for the caller to fail. A second call returns nothing new and
    /// keeps the first reason.
    pub fn close(&mut self, reason: EndReason) -> Vec<(u64, T)> {
        self.ended.get_or_insert(reason);
        std::mem::take(&mut self.outstanding).into_iter().collect()
    }
}

type Waiter = oneshot::Sender<Result<Packet, ChannelError>>;

/// A shareable transaction table whose requests can be awaited.
///
/// The task that receives from the channel hands completions to [`complete`](Self::complete);
/// the tasks that made the requests await their [`Response`]. Cloning shares the table.
#[derive(Debug, Clone)]
pub struct AsyncTransactions {
    inner: Arc<Mutex<Transactions<Waiter>>>,
}

impl AsyncTransactions {
    /// An empty table.
    pub fn new(config: TransactionConfig) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Transactions::new(config))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Transactions<Waiter>> {
        // Every table operation is a single map update, so a poisoned lock is consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a request: returns its id and the future of its completion.
    pub fn begin(&self) -> Result<(u64, Response), TransactionError> {
        let (sender, receiver) = oneshot::channel();
        let id = self.lock().begin(sender)?;
        Ok((id, Response { receiver }))
    }

    /// Hands a completion to the request it names. The waiter gets the whole packet; if it
    /// stopped waiting, the completion is still matched and then dropped.
    pub fn complete(&self, packet: Packet) -> Result<(), TransactionError> {
        let waiter = self.lock().complete(packet.transaction_id)?;
        // The waiter may have dropped its `Response`; that is its choice, not an error.
        let _ = waiter.send(Ok(packet));
        Ok(())
    }

    /// Forgets an outstanding request; its [`Response`] resolves to `Closed`.
    pub fn cancel(&self, id: u64) {
        self.lock().cancel(id);
    }

    /// The number of outstanding requests.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request is outstanding.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Ends the table and fails every outstanding request with `reason`'s error
    /// ([`ChannelError::Closed`] or [`ChannelError::Revoked`]).
    pub fn close(&self, reason: EndReason) {
        let failed = self.lock().close(reason);
        for (_, waiter) in failed {
            let _ = waiter.send(Err(reason.error()));
        }
    }

    /// Sends `payload` as a request (completion requested) on `channel` and returns the
    /// future of its completion. If the send fails the request is cancelled.
    pub async fn request<C: Channel + ?Sized>(
        &self,
        channel: &mut C,
        payload: Vec<u8>,
    ) -> Result<Response, ChannelError> {
        let (id, response) = self.begin().map_err(|err| match err {
            TransactionError::Ended(reason) => reason.error(),
            other => ChannelError::Transaction(other),
        })?;
        let packet = Packet::request(id, payload);
        if let Err(err) = channel.send(&packet).await {
            self.cancel(id);
            return Err(err);
        }
        Ok(response)
    }
}

/// The completion of one request started with [`AsyncTransactions::begin`].
///
/// Resolves to the completion packet, or to `Closed`/`Revoked` when the table is closed first
/// (or `Closed` when the request was cancelled).
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Response {
    receiver: oneshot::Receiver<Result<Packet, ChannelError>>,
}

impl Future for Response {
    type Output = Result<Packet, ChannelError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.receiver).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            // The waiter was dropped without an answer: cancelled or table dropped.
            Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(Err(ChannelError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::channel_pair;
    use futures::FutureExt;
    use futures::executor::block_on;

    fn table(max: usize) -> Transactions<&'static str> {
        Transactions::new(TransactionConfig {
            max_outstanding: max,
            first_id: 10,
        })
    }

    /// Completions match their requests whatever the order.
    #[test]
    fn completions_match_out_of_order() {
        let mut t = table(4);
        let a = t.begin("a").unwrap();
        let b = t.begin("b").unwrap();
        assert_eq!((a, b), (10, 11));
        assert_eq!(t.complete(b), Ok("b"));
        assert_eq!(t.complete(a), Ok("a"));
        assert!(t.is_empty());
    }

    /// A completion for an id never issued is `Unknown`, below or above the issued range.
    #[test]
    fn unknown_id_is_an_error() {
        let mut t = table(4);
        t.begin("a").unwrap();
        assert_eq!(t.complete(9), Err(TransactionError::Unknown { id: 9 }));
        assert_eq!(t.complete(11), Err(TransactionError::Unknown { id: 11 }));
        assert_eq!(
            t.complete(u64::MAX),
            Err(TransactionError::Unknown { id: u64::MAX })
        );
        assert_eq!(t.len(), 1);
    }

    /// A second completion for the same id is `AlreadyCompleted`, as is one for a cancelled id.
    #[test]
    fn double_completion_is_an_error() {
        let mut t = table(4);
        let a = t.begin("a").unwrap();
        let b = t.begin("b").unwrap();
        assert_eq!(t.complete(a), Ok("a"));
        assert_eq!(
            t.complete(a),
            Err(TransactionError::AlreadyCompleted { id: a })
        );
        assert_eq!(t.cancel(b), Some("b"));
        assert_eq!(
            t.complete(b),
            Err(TransactionError::AlreadyCompleted { id: b })
        );
    }

    /// The outstanding bound refuses the request past it, and frees up on completion.
    #[test]
    fn outstanding_bound_is_enforced() {
        let mut t = table(2);
        let a = t.begin("a").unwrap();
        t.begin("b").unwrap();
        assert_eq!(
            t.begin("c"),
            Err(TransactionError::TooManyOutstanding { limit: 2 })
        );
        t.complete(a).unwrap();
        assert!(t.begin("c").is_ok());
    }

    /// Closing returns every outstanding request in id order and refuses new ones.
    #[test]
    fn close_drains_outstanding() {
        let mut t = table(4);
        let a = t.begin("a").unwrap();
        let b = t.begin("b").unwrap();
        assert_eq!(t.close(EndReason::Revoked), vec![(a, "a"), (b, "b")]);
        assert_eq!(
            t.begin("c"),
            Err(TransactionError::Ended(EndReason::Revoked))
        );
        assert!(t.close(EndReason::Closed).is_empty());
        assert_eq!(t.ended(), Some(EndReason::Revoked));
    }

    /// Closing the async table fails every waiter with `Closed`.
    #[test]
    fn async_close_fails_waiters() {
        let t = AsyncTransactions::new(TransactionConfig::default());
        let (_, r1) = t.begin().unwrap();
        let (_, r2) = t.begin().unwrap();
        t.close(EndReason::Closed);
        assert!(matches!(block_on(r1), Err(ChannelError::Closed)));
        assert!(matches!(block_on(r2), Err(ChannelError::Closed)));
        assert!(matches!(
            t.begin(),
            Err(TransactionError::Ended(EndReason::Closed))
        ));
    }

    /// A request over a channel resolves with its completion; a stray completion is refused.
    #[test]
    fn async_request_over_memory_pair() {
        let (mut client, mut server) = channel_pair();
        let t = AsyncTransactions::new(TransactionConfig::default());
        block_on(async {
            let mut response = t.request(&mut client, vec![1, 2]).await.unwrap();
            assert!((&mut response).now_or_never().is_none());
            let req = server.recv().await.unwrap();
            assert!(req.completion_requested());
            server
                .send(&Packet::completion(req.transaction_id, vec![7]))
                .await
                .unwrap();
            let comp = client.recv().await.unwrap();
            t.complete(comp.clone()).unwrap();
            assert_eq!(
                response.await.unwrap().payload,
                vec![7, 0, 0, 0, 0, 0, 0, 0]
            );
            assert_eq!(
                t.complete(comp),
                Err(TransactionError::AlreadyCompleted {
                    id: req.transaction_id
                })
            );
        });
    }

    /// A failed send cancels the request it started.
    #[test]
    fn failed_send_cancels_request() {
        let (mut client, server) = channel_pair();
        drop(server);
        let t = AsyncTransactions::new(TransactionConfig::default());
        let err = block_on(t.request(&mut client, vec![])).unwrap_err();
        assert!(matches!(err, ChannelError::Closed));
        assert!(t.is_empty());
    }
}
