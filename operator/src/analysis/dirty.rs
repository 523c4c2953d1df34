//! A dirty set: the (namespace, name) of each subject with news, drained
//! by one consumer. Marking a subject twice before it is taken keeps one
//! entry, so the set never holds more than the subjects there are.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::Notify;

/// Subjects with news since the consumer last looked.
#[derive(Default)]
pub(super) struct Dirty {
    set: Mutex<BTreeSet<(String, String)>>,
    notify: Notify,
    taken: AtomicBool,
}

impl Dirty {
    /// Note that `(ns, name)` has news.
    pub fn mark(&self, ns: String, name: String) {
        self.set.lock().expect("dirty lock").insert((ns, name));
        // Stores a permit when nobody waits, so no mark is missed.
        self.notify.notify_one();
    }

    /// Take everything marked so far.
    fn drain(&self) -> BTreeSet<(String, String)> {
        std::mem::take(&mut *self.set.lock().expect("dirty lock"))
    }

    /// The marked subjects as a stream, for the one consumer; `None` once
    /// it has been taken.
    pub fn stream(self: &std::sync::Arc<Self>) -> Option<BoxStream<'static, (String, String)>> {
        if self.taken.swap(true, Ordering::SeqCst) {
            return None;
        }
        let me = self.clone();
        let batches = futures::stream::unfold(me, |me| async move {
            loop {
                let batch = me.drain();
                if !batch.is_empty() {
                    return Some((futures::stream::iter(batch), me));
                }
                me.notify.notified().await;
            }
        });
        Some(batches.flatten().boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_before_the_consumer_looks_are_kept_once_each() {
        let d = std::sync::Arc::new(Dirty::default());
        let mut s = d.stream().expect("first consumer");
        assert!(d.stream().is_none(), "one consumer only");
        for _ in 0..1000 {
            d.mark("fleet".into(), "a".into());
        }
        d.mark("fleet".into(), "b".into());
        assert_eq!(d.set.lock().expect("lock").len(), 2);
        let got: Vec<_> = [s.next().await, s.next().await]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(
            got,
            [("fleet".into(), "a".into()), ("fleet".into(), "b".into())]
        );
        // A mark after the drain wakes the waiting consumer.
        let later = tokio::spawn(async move { s.next().await });
        d.mark("fleet".into(), "c".into());
        let c = tokio::time::timeout(std::time::Duration::from_secs(10), later)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(c, Some(("fleet".into(), "c".into())));
    }
}
