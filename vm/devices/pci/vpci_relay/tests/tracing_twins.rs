//! Every event the relay reports has its tracing twin. Alone in its test binary: tracing
//! caches, per call site and process wide, whether anyone listens, so a test on another
//! thread without a subscriber could make this one miss events.

mod common;

use common::*;
use std::time::Duration;

/// Every event the relay reports has its tracing twin: one tracing event per relay event.
#[test]
fn every_event_has_a_tracing_twin() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tracing_subscriber::layer::SubscriberExt;

    struct Count(Arc<AtomicUsize>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if event.metadata().target().starts_with("vpci_relay") {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let count = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry()
        .with(Count(count.clone()))
        .with(tracing_subscriber::filter::LevelFilter::TRACE);
    let events = tracing::subscriber::with_default(subscriber, || {
        let mut bus = Bus::installed_with(&[1, 2]);
        bus.host_sends(relations2(&[2, 3]));
        bus.host_sends(eject(3));
        bus.host_sends(eject(2));
        bus.guest_sends(vec![1, 2, 3]);
        bus.advance(Duration::from_secs(1));
        bus.guest_sends(ejection_complete(1));
        bus.advance(Duration::from_secs(1));
        bus.relay.handle_host_closed(bus.now);
        bus.drain();
        bus.advance(Duration::from_secs(40));
        bus.events.len()
    });
    assert!(events > 10);
    assert_eq!(count.load(Ordering::SeqCst), events);
}
