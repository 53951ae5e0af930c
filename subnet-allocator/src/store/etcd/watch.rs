//! The etcd watch on the subnets prefix, the stream behind a
//! [`crate::LeaseWatch`]: batches of lease events, compaction and
//! cancellation reported as errors.

use etcd_client::{WatchStream as EtcdStream, Watcher};
use ipnet::Ipv4Net;

use super::client::{Failure, Peer};
use super::schema::decode_event;
use crate::store::{StoreError, WatchBatch};

pub(super) struct EtcdWatch {
    // Dropping the watcher closes the request side of the stream.
    _watcher: Watcher,
    stream: EtcdStream,
    prefix: String,
    network: Option<Ipv4Net>,
    peer: Peer,
}

impl EtcdWatch {
    pub(super) fn new(
        watcher: Watcher,
        stream: EtcdStream,
        prefix: String,
        network: Option<Ipv4Net>,
        peer: &Peer,
    ) -> Self {
        EtcdWatch {
            _watcher: watcher,
            stream,
            prefix,
            network,
            peer: peer.clone(),
        }
    }

    pub(super) async fn next_batch(&mut self) -> WatchBatch {
        loop {
            let msg = self
                .stream
                .message()
                .await
                .map_err(|e| Failure::of(&e).stream_error("watch", e, &self.peer))?;
            let Some(resp) = msg else {
                return Ok(None);
            };
            if resp.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    compact_revision: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Err(StoreError::WatchCanceled {
                    reason: resp.cancel_reason().to_string(),
                });
            }
            let mut revision = resp.header().map_or(0, |h| h.revision());
            let mut events = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                // The last event's revision, not the header's: the header
                // may be ahead of events still to come in later fragments.
                if let Some(kv) = ev.kv() {
                    revision = kv.mod_revision();
                }
                events.extend(decode_event(&self.prefix, ev, self.network));
            }
            if !events.is_empty() {
                return Ok(Some((events, revision)));
            }
        }
    }
}
