//! Admission control: how many requests a model runs at once, and who waits next.
//!
//! Each model has as many slots as its engine has (`-np`). A request that finds every slot busy
//! waits in a bounded queue; past the bound it is refused (429). Waiters are grouped by API key
//! and served round-robin across keys, so one client sending a hundred requests cannot starve
//! another sending one.
//!
//! A draining box admits nothing new (503 with Retry-After, so a gateway sends the request to
//! another box) while what runs and what already waits is answered; it is drained when nothing
//! is left.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Debug, PartialEq, Eq)]
pub enum AdmissionError {
    /// The queue for this model is full.
    QueueFull { waiting: usize },
    /// The box is draining.
    Draining,
}

pub struct Admission {
    queue_depth: usize,
    draining: AtomicBool,
    models: Mutex<HashMap<String, ModelQueue>>,
}

/// One model's requests at a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLoad {
    pub model: String,
    pub running: usize,
    pub waiting: usize,
}

struct ModelQueue {
    slots: usize,
    busy: usize,
    waiting: usize,
    /// Keys with waiters, in the order they will next be served.
    turn: VecDeque<String>,
    per_key: HashMap<String, VecDeque<oneshot::Sender<Permit>>>,
}

/// A held slot; dropping it hands the slot to the next waiter.
pub struct Permit {
    admission: Arc<Admission>,
    model: String,
    /// False for a permit that was never handed out, whose drop must not release a slot.
    armed: bool,
}

impl Admission {
    pub fn new(queue_depth: usize) -> Arc<Admission> {
        Arc::new(Admission { queue_depth, draining: AtomicBool::new(false), models: Mutex::new(HashMap::new()) })
    }

    /// Starts or ends draining.
    pub fn set_draining(&self, draining: bool) {
        if self.draining.swap(draining, Ordering::SeqCst) != draining {
            tracing::info!("{}", if draining { "draining: taking no new requests" } else { "draining ended: taking requests again" });
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Every model with requests running or waiting.
    pub fn load(&self) -> Vec<ModelLoad> {
        let models = self.models.lock().unwrap();
        let mut load: Vec<ModelLoad> = models
            .iter()
            .filter(|(_, q)| q.busy + q.waiting > 0)
            .map(|(model, q)| ModelLoad { model: model.clone(), running: q.busy, waiting: q.waiting })
            .collect();
        load.sort_by(|a, b| a.model.cmp(&b.model));
        load
    }

    /// Waits for a slot of `model` on behalf of `key`.
    pub async fn acquire(self: &Arc<Self>, model: &str, slots: usize, key: &str) -> Result<Permit, AdmissionError> {
        let rx = {
            let mut models = self.models.lock().unwrap();
            // Read under the lock: a request either counts in `load` or is refused.
            if self.is_draining() {
                return Err(AdmissionError::Draining);
            }
            let q = models.entry(model.to_string()).or_insert_with(|| ModelQueue {
                slots,
                busy: 0,
                waiting: 0,
                turn: VecDeque::new(),
                per_key: HashMap::new(),
            });
            q.slots = slots.max(1);
            if q.busy < q.slots && q.waiting == 0 {
                q.busy += 1;
                return Ok(Permit { admission: self.clone(), model: model.to_string(), armed: true });
            }
            if q.waiting >= self.queue_depth {
                return Err(AdmissionError::QueueFull { waiting: q.waiting });
            }
            let (tx, rx) = oneshot::channel();
            let waiters = q.per_key.entry(key.to_string()).or_default();
            if waiters.is_empty() {
                q.turn.push_back(key.to_string());
            }
            waiters.push_back(tx);
            q.waiting += 1;
            rx
        };
        // The permit travels through the channel, so a waiter cancelled after the hand-over
        // drops it there and the slot passes on. Senders are dropped only after sending.
        Ok(rx.await.expect("admission queue dropped a waiter"))
    }

    fn release(self: &Arc<Self>, model: &str) {
        let mut models = self.models.lock().unwrap();
        let Some(q) = models.get_mut(model) else { return };
        // Hand the slot to the next waiter whose request is still alive, keys taking turns.
        while let Some(key) = q.turn.pop_front() {
            let waiters = q.per_key.get_mut(&key).expect("a key in turn has waiters");
            let next = waiters.pop_front().expect("a key in turn has at least one waiter");
            q.waiting -= 1;
            if waiters.is_empty() {
                q.per_key.remove(&key);
            } else {
                q.turn.push_back(key);
            }
            let permit = Permit { admission: self.clone(), model: model.to_string(), armed: true };
            match next.send(permit) {
                Ok(()) => return,
                // Its drop must not re-enter `release` under the lock; the slot is simply
                // offered to the next waiter instead.
                Err(mut permit) => permit.armed = false,
            }
        }
        q.busy -= 1;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.armed {
            self.admission.release(&self.model);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bounded_queue_refuses_past_depth() {
        let adm = Admission::new(1);
        let p1 = adm.acquire("m", 1, "a").await.unwrap();
        let adm2 = adm.clone();
        let waiter = tokio::spawn(async move { adm2.acquire("m", 1, "a").await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(adm.load(), vec![ModelLoad { model: "m".into(), running: 1, waiting: 1 }]);
        assert_eq!(adm.acquire("m", 1, "b").await.err(), Some(AdmissionError::QueueFull { waiting: 1 }));
        drop(p1);
        waiter.await.unwrap().unwrap();
        assert!(adm.load().is_empty());
    }

    #[tokio::test]
    async fn keys_take_turns() {
        let adm = Admission::new(100);
        let first = adm.acquire("m", 1, "greedy").await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // The greedy key queues five requests before the polite key queues one.
        for (i, key) in ["greedy", "greedy", "greedy", "greedy", "greedy", "polite"].into_iter().enumerate() {
            let (adm, order) = (adm.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = adm.acquire("m", 1, key).await.unwrap();
                order.lock().unwrap().push(format!("{key}{i}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(permit);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let polite_at = order.iter().position(|s| s.starts_with("polite")).unwrap();
        assert!(polite_at <= 1, "polite served at position {polite_at}: {order:?}");
    }

    #[tokio::test]
    async fn draining_refuses_new_work_and_finishes_the_rest() {
        let adm = Admission::new(10);
        let running = adm.acquire("m", 1, "a").await.unwrap();
        let adm2 = adm.clone();
        let waiter = tokio::spawn(async move { adm2.acquire("m", 1, "b").await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        adm.set_draining(true);
        assert_eq!(adm.acquire("m", 1, "c").await.err(), Some(AdmissionError::Draining));
        assert_eq!(adm.load(), vec![ModelLoad { model: "m".into(), running: 1, waiting: 1 }]);
        drop(running);
        waiter.await.unwrap().expect("a request waiting before the drain is answered");
        assert!(adm.load().is_empty(), "drained");
        adm.set_draining(false);
        adm.acquire("m", 1, "c").await.expect("admitted again");
    }

    #[tokio::test]
    async fn cancelled_waiter_does_not_leak_a_slot() {
        let adm = Admission::new(10);
        let p = adm.acquire("m", 1, "a").await.unwrap();
        let adm2 = adm.clone();
        let cancelled = tokio::spawn(async move {
            let _ = adm2.acquire("m", 1, "a").await;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancelled.abort();
        let _ = cancelled.await;
        drop(p);
        assert!(adm.load().is_empty());
        let _again = tokio::time::timeout(Duration::from_secs(1), adm.acquire("m", 1, "b")).await.unwrap().unwrap();
    }
}
