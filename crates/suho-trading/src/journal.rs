//! The engines' journal, `engine.journal`: what a batch decided, written and acknowledged
//! before any of it is published, so that outcomes can go out without a Kafka transaction
//! and still be published exactly once in effect.
//!
//! Partition `p` of the journal belongs to partition `p` of `user.commands`: whoever owns
//! that command partition writes there, and only there. Two kinds of record:
//! - a [`Record::Fence`], written when an engine takes the partition (its owner is a fresh
//!   name per take): every entry written after it by another owner is void;
//! - a [`Record::Entry`]: the outcomes a batch decided for the partition's users (their
//!   records as they will be published), the partition's next command offset after the
//!   batch, and the offset before which every valid entry is known to be published.
//!
//! The protocol, per batch: append the entries; read the journal's own tail up to them
//! ([`Journal::confirm`]): if another owner's fence came first, this engine has lost the
//! partition (a frozen "zombie" that thawed) and publishes nothing; otherwise publish the
//! outcomes and commit the command offsets. Taking a partition ([`Journal::take`]) writes a
//! fence and reads back, from the last known-published point, the valid entries before it:
//! their outcomes may not all be published, so the new owner publishes what the output log
//! lacks, and resumes the partition's commands after the last entry's offset.
//!
//! The race this leaves: an owner confirmed an entry, then froze before publishing it; the
//! next owner republishes the entry's outcomes; the old one thaws and publishes them too.
//! Both copies are the same records with the same `event_id`s (they come from one entry), so
//! a reader that keeps the first of each `event_id` sees every outcome once.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use suho_domain::UserTopic;
use suho_messaging::kafka::Outgoing;
use suho_messaging::UserEventProducer;

use crate::EngineError;
use suho_messaging::kafka::Quiet;

/// How many records a recovering engine reads at a time while it walks back from its fence.
const CHUNK: i64 = 256;
/// How long one poll of a journal reader waits.
const POLL: Duration = Duration::from_millis(100);
/// The longest a read of the journal may take before it is reported as a failure.
const READ_DEADLINE: Duration = Duration::from_secs(60);
/// The largest entry written: a batch's outcomes for one partition that would make a larger
/// record (Kafka refuses records over 1 MiB by default) are split over several entries.
const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// One record of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// `owner` took the partition.
    Fence {
        /// The name the owner writes its entries under (fresh for every take).
        owner: String,
        /// When, in epoch milliseconds.
        at_ms: i64,
    },
    /// What one batch decided for the partition's users.
    Entry {
        /// Who wrote it.
        owner: String,
        /// The offset of its owner's fence: the entry is valid only if no other fence came
        /// between the two.
        fence: i64,
        /// Every valid entry before this journal offset had been published when it was
        /// written.
        published_through: i64,
        /// The offset of the partition's next `user.commands` record after this batch (as
        /// of the latest batch with a command: an entry of ticks alone carries it on).
        next_command: Option<i64>,
        /// The records to publish, in order.
        outcomes: Vec<Outcome>,
    },
}

/// A record to publish, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The topic's unprefixed name.
    pub topic: String,
    /// The record's key.
    pub key: String,
    /// Its headers, values in base64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Its value, in base64.
    pub payload: String,
}

impl Outcome {
    /// The journal's copy of `record`.
    #[must_use]
    pub fn of(record: &Outgoing) -> Outcome {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let headers = record
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| (x.key.to_owned(), b64.encode(x.value.unwrap_or_default())))
                    .collect()
            })
            .unwrap_or_default();
        Outcome {
            topic: record.topic().name().to_owned(),
            key: record.key().to_owned(),
            headers,
            payload: b64.encode(record.payload()),
        }
    }

    /// The record to publish again.
    ///
    /// # Errors
    /// The topic is unknown or the base64 does not decode: the journal was not written by
    /// this code.
    pub fn record(&self) -> Result<Outgoing, EngineError> {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let bad = |what: &str| EngineError::Rebuild(format!("a journal outcome's {what}"));
        let topic = UserTopic::from_name(&self.topic).ok_or_else(|| bad("topic"))?;
        let payload = b64.decode(&self.payload).map_err(|_| bad("payload"))?;
        let headers = if self.headers.is_empty() {
            None
        } else {
            let mut h = OwnedHeaders::new();
            for (key, value) in &self.headers {
                let value = b64.decode(value).map_err(|_| bad("header"))?;
                h = h.insert(Header {
                    key,
                    value: Some(&value),
                });
            }
            Some(h)
        };
        Ok(Outgoing::raw(topic, &self.key, &payload, headers))
    }

    /// The `event_id` of the record's value, if it is an event with one.
    #[must_use]
    pub fn event_id(&self) -> Option<String> {
        let payload = base64::engine::general_purpose::STANDARD
            .decode(&self.payload)
            .ok()?;
        #[derive(Deserialize)]
        struct Id {
            event_id: String,
        }
        serde_json::from_slice::<Id>(&payload)
            .ok()
            .map(|i| i.event_id)
    }
}

/// The `kind` of a [`Record::Fence`].
const FENCE: &str = "fence";

/// A record's kind and owner, all the tail reader needs of it.
#[derive(Deserialize)]
struct Head {
    kind: String,
    owner: String,
}

/// What taking a partition found in its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// The offset of this owner's fence.
    pub fence: i64,
    /// The valid entries from the last known-published point up to the fence, oldest first
    /// (journal offset and outcomes): the output log may lack some of their outcomes.
    pub unpublished: Vec<(i64, Vec<Outcome>)>,
    /// Where the partition's commands resume: the last valid entry's `next_command`.
    pub next_command: Option<i64>,
}

/// Another owner took the partition after this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    /// The partition.
    pub partition: i32,
    /// The new owner.
    pub by: String,
}

/// What this owner knows of one partition it holds.
#[derive(Debug, Clone)]
struct Held {
    owner: String,
    fence: i64,
    published_through: i64,
    next_command: Option<i64>,
}

/// One engine's view of the journal: the partitions it holds, a producer for its entries and
/// fences, and a reader of its own tail.
pub struct Journal {
    producer: UserEventProducer,
    base: rdkafka::ClientConfig,
    topic: String,
    /// The engine's instance id: the stem of every owner name it writes.
    instance: String,
    held: std::sync::Mutex<HashMap<i32, Held>>,
    /// Reads the held partitions' tails from just after their fences ([`Journal::confirm`]).
    tail: std::sync::Mutex<Option<Tail>>,
}

/// The tail reader and how far it has read each partition.
struct Tail {
    consumer: BaseConsumer<Quiet>,
    next: HashMap<i32, i64>,
    fenced: HashMap<i32, (i64, String)>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("topic", &self.topic)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// The journal of `kafka`'s deployment, written under names stemmed `instance`.
    ///
    /// # Errors
    /// The producer's configuration is refused.
    pub fn new(kafka: &suho_config::KafkaConfig, instance: &str) -> Result<Journal, EngineError> {
        Ok(Journal {
            producer: UserEventProducer::new(kafka)?,
            base: suho_messaging::kafka::base_config(kafka),
            topic: UserTopic::EngineJournal.full_name(&kafka.topic_prefix),
            instance: instance.to_owned(),
            held: std::sync::Mutex::new(HashMap::new()),
            tail: std::sync::Mutex::new(None),
        })
    }

    /// The partitions held, with their owner names.
    #[must_use]
    pub fn held(&self) -> HashMap<i32, String> {
        self.lock_held()
            .iter()
            .map(|(p, h)| (*p, h.owner.clone()))
            .collect()
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `partitions` (and lets go of any other): a fence on each, then what the journal
    /// holds before it that may not be published yet (see the module's documentation).
    ///
    /// # Errors
    /// Kafka did not take a fence, or the journal could not be read back in time.
    pub async fn take(&self, partitions: &[i32]) -> Result<HashMap<i32, Taken>, EngineError> {
        let nonce = suho_domain::new_event_id("");
        let owner = format!("{}/{nonce}", self.instance);
        let fence = serde_json::to_vec(&Record::Fence {
            owner: owner.clone(),
            at_ms: suho_messaging::now_ms(),
        })
        .map_err(|e| EngineError::Rebuild(format!("encoding a fence: {e}")))?;
        let mut queued = Vec::new();
        for &p in partitions {
            queued.push((
                p,
                self.producer
                    .enqueue_to_partition(UserTopic::EngineJournal, p, &fence)?,
            ));
        }
        let mut fences = Vec::new();
        for (p, q) in queued {
            fences.push((p, q.delivered().await?.offset));
        }
        let (base, topic) = (self.base.clone(), self.topic.clone());
        let found = tokio::task::spawn_blocking(move || {
            let reader: BaseConsumer<Quiet> = reader(&base)?;
            fences
                .into_iter()
                .map(|(p, f)| recover(&reader, &topic, p, f).map(|t| (p, t)))
                .collect::<Result<HashMap<i32, Taken>, EngineError>>()
        })
        .await
        .map_err(|e| EngineError::Rebuild(format!("the journal reader thread: {e}")))??;
        let mut held = self.lock_held();
        held.clear();
        for (p, t) in &found {
            held.insert(
                *p,
                Held {
                    owner: owner.clone(),
                    fence: t.fence,
                    published_through: t.fence,
                    next_command: t.next_command,
                },
            );
        }
        drop(held);
        let consumer = reader(&self.base)?;
        let mut tpl = TopicPartitionList::new();
        for (p, t) in &found {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(t.fence + 1))?;
        }
        consumer.assign(&tpl)?;
        *self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Tail {
            consumer,
            next: found.iter().map(|(p, t)| (*p, t.fence + 1)).collect(),
            fenced: HashMap::new(),
        });
        Ok(found)
    }

    /// Appends one entry per partition (`next_command`: the partition's next command offset
    /// after the batch, if the batch had commands of it; more than one entry where the
    /// outcomes are many) and waits for Kafka's acknowledgements; the entries' offsets.
    ///
    /// # Errors
    /// A partition is not held, or Kafka did not take an entry.
    pub async fn append(
        &self,
        entries: Vec<(i32, Option<i64>, Vec<Outcome>)>,
    ) -> Result<Vec<(i32, i64)>, EngineError> {
        let mut queued = Vec::new();
        {
            let mut held = self.lock_held();
            for (p, next_command, outcomes) in entries {
                let h = held.get_mut(&p).ok_or_else(|| {
                    EngineError::Rebuild(format!("journal partition {p} is not held"))
                })?;
                if next_command.is_some() {
                    h.next_command = next_command;
                }
                for bytes in encode(h, outcomes)? {
                    queued.push((
                        p,
                        self.producer
                            .enqueue_to_partition(UserTopic::EngineJournal, p, &bytes)?,
                    ));
                }
            }
        }
        let mut out = Vec::with_capacity(queued.len());
        for (p, q) in queued {
            out.push((p, q.delivered().await?.offset));
        }
        Ok(out)
    }

    /// Reads the held partitions' tails up to the entries `written`: `Ok(Err(Fenced))` if
    /// another owner's fence came before one of them (then nothing of them may be published).
    ///
    /// # Errors
    /// The tail could not be read in time.
    pub async fn confirm(&self, written: &[(i32, i64)]) -> Result<Result<(), Fenced>, EngineError> {
        let deadline = std::time::Instant::now() + READ_DEADLINE;
        let held = self.held();
        loop {
            {
                let mut guard = self
                    .tail
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let tail = guard
                    .as_mut()
                    .ok_or_else(|| EngineError::Rebuild("the journal is not taken".to_owned()))?;
                if let Some((p, by)) = written.iter().find_map(|(p, at)| {
                    tail.fenced
                        .get(p)
                        .filter(|(f, _)| f < at)
                        .map(|(_, by)| (*p, by.clone()))
                }) {
                    return Ok(Err(Fenced { partition: p, by }));
                }
                if written
                    .iter()
                    .all(|(p, at)| tail.next.get(p).is_some_and(|n| n > at))
                {
                    return Ok(Ok(()));
                }
                // What has arrived, without blocking the runtime for long. Only a record's kind
                // and owner are read: the tail is mostly this engine's own entries.
                while let Some(m) = tail.consumer.poll(Duration::ZERO) {
                    let m = m?;
                    tail.next.insert(m.partition(), m.offset() + 1);
                    if let Ok(Head { kind, owner }) =
                        serde_json::from_slice::<Head>(m.payload().unwrap_or_default())
                    {
                        if kind == FENCE && held.get(&m.partition()) != Some(&owner) {
                            tail.fenced
                                .entry(m.partition())
                                .or_insert((m.offset(), owner));
                        }
                    }
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(EngineError::Rebuild(format!(
                    "the journal's tail was not read up to {written:?} within {READ_DEADLINE:?}"
                )));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// The entry at `offset` of `partition` is published, and every one before it.
    pub fn published(&self, partition: i32, offset: i64) {
        if let Some(h) = self.lock_held().get_mut(&partition) {
            h.published_through = h.published_through.max(offset + 1);
        }
    }
}

/// `outcomes` as entries of `h`'s partition, each under [`MAX_ENTRY_BYTES`] unless a single
/// outcome is larger.
fn encode(h: &Held, outcomes: Vec<Outcome>) -> Result<Vec<Vec<u8>>, EngineError> {
    let entry = |outcomes: Vec<Outcome>| Record::Entry {
        owner: h.owner.clone(),
        fence: h.fence,
        published_through: h.published_through,
        next_command: h.next_command,
        outcomes,
    };
    let mut pending = vec![outcomes];
    let mut out = Vec::new();
    while let Some(mut part) = pending.pop() {
        let n = part.len();
        let bytes = serde_json::to_vec(&entry(part.clone()))
            .map_err(|e| EngineError::Rebuild(format!("encoding an entry: {e}")))?;
        if bytes.len() <= MAX_ENTRY_BYTES || n <= 1 {
            out.push(bytes);
            continue;
        }
        let rest = part.split_off(n / 2);
        // The later half is popped after the earlier: the order stays the outcomes'.
        pending.push(rest);
        pending.push(part);
    }
    Ok(out)
}

/// A reader of the journal: no group, no commits, every record as written.
fn reader(base: &rdkafka::ClientConfig) -> Result<BaseConsumer<Quiet>, EngineError> {
    Ok(base
        .clone()
        .set("group.id", suho_security::kafka::names::ENGINE_REBUILD)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "5")
        .create_with_context(Quiet)?)
}

/// The records of `partition` from `from` up to (not including) `to`.
fn read_range(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, Record)>, EngineError> {
    let mut out = Vec::new();
    if from >= to {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + READ_DEADLINE;
    loop {
        if let Some(m) = consumer.poll(POLL) {
            let m = m?;
            if m.offset() >= to {
                break;
            }
            let record = serde_json::from_slice::<Record>(m.payload().unwrap_or_default())
                .map_err(|e| {
                    EngineError::Rebuild(format!(
                        "{topic} partition {partition} offset {}: {e}",
                        m.offset()
                    ))
                })?;
            let last = m.offset() + 1 >= to;
            out.push((m.offset(), record));
            if last {
                break;
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(EngineError::Rebuild(format!(
                "{topic} partition {partition}: not read from {from} to {to} within {READ_DEADLINE:?}"
            )));
        }
    }
    Ok(out)
}

/// What the journal of `partition` holds before the fence at `fence` (see [`Taken`]).
fn recover(
    consumer: &BaseConsumer<Quiet>,
    topic: &str,
    partition: i32,
    fence: i64,
) -> Result<Taken, EngineError> {
    let (low, _) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    // Walk back from the fence, a chunk at a time, until the start point is in reach.
    let mut records: Vec<(i64, Record)> = Vec::new();
    let mut hi = fence;
    loop {
        let lo = (hi - CHUNK).max(low);
        let mut chunk = read_range(consumer, topic, partition, lo, hi)?;
        chunk.append(&mut records);
        records = chunk;
        if let Some((start, owner_fence)) = start_point(&records) {
            return Ok(replay(&records, start, owner_fence, fence));
        }
        if lo <= low {
            // Nothing was ever journaled here (or retention took it all): a fresh start.
            return Ok(Taken {
                fence,
                unpublished: Vec::new(),
                next_command: None,
            });
        }
        hi = lo;
    }
}

/// Where the unpublished entries in `records` (consecutive, up to a fence) may begin, and
/// the fence in effect there: the latest owner that wrote an entry (an owner that wrote
/// none died before it had finished taking the partition, so its predecessor's work is still
/// open) had published every valid entry before its latest entry's `published_through`.
/// `None` if `records` do not reach back far enough to tell.
fn start_point(records: &[(i64, Record)]) -> Option<(i64, i64)> {
    // Every fence in reach, and every fence an entry in reach names.
    let mut fences: Vec<i64> = records
        .iter()
        .map(|(offset, r)| match r {
            Record::Fence { .. } => *offset,
            Record::Entry { fence, .. } => *fence,
        })
        .collect();
    fences.sort_unstable();
    fences.dedup();
    fences.into_iter().rev().find_map(|f| {
        records.iter().rev().find_map(|(offset, r)| match r {
            Record::Entry {
                fence,
                published_through,
                ..
            } if *fence == f && *offset > f => Some((*published_through, f)),
            _ => None,
        })
    })
}

/// The valid entries of `records` from `start` on (where the fence at `owner_fence` is in
/// effect), and the resume point.
fn replay(records: &[(i64, Record)], start: i64, owner_fence: i64, fence: i64) -> Taken {
    let mut current = owner_fence;
    let mut unpublished = Vec::new();
    let mut next_command = None;
    for (offset, r) in records.iter().filter(|(o, _)| *o >= start) {
        match r {
            Record::Fence { .. } => current = current.max(*offset),
            Record::Entry {
                fence: f,
                next_command: n,
                outcomes,
                ..
            } => {
                // An entry written after another owner's fence is a zombie's: void.
                if *f != current {
                    continue;
                }
                if n.is_some() {
                    next_command = *n;
                }
                unpublished.push((*offset, outcomes.clone()));
            }
        }
    }
    Taken {
        fence,
        unpublished,
        next_command,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(owner: &str) -> Record {
        Record::Fence {
            owner: owner.into(),
            at_ms: 0,
        }
    }

    fn entry(
        owner: &str,
        fence: i64,
        published_through: i64,
        next: Option<i64>,
        tag: &str,
    ) -> Record {
        Record::Entry {
            owner: owner.into(),
            fence,
            published_through,
            next_command: next,
            outcomes: vec![Outcome {
                topic: "user.trades".into(),
                key: "usr_1".into(),
                headers: vec![],
                payload: tag.into(),
            }],
        }
    }

    fn tags(t: &Taken) -> Vec<(i64, String)> {
        t.unpublished
            .iter()
            .map(|(o, x)| (*o, x[0].payload.clone()))
            .collect()
    }

    #[test]
    fn a_new_owner_takes_up_what_the_last_owner_had_not_published() {
        // A fenced at 0; its entries 1..=4; entry 4 says 1 and 2 were published.
        let log: Vec<(i64, Record)> = vec![
            (0, fence("a")),
            (1, entry("a", 0, 0, Some(10), "a1")),
            (2, entry("a", 0, 2, Some(11), "a2")),
            (3, entry("a", 0, 3, Some(11), "a3")),
            (4, entry("a", 0, 3, Some(12), "a4")),
        ];
        let (start, f) = start_point(&log).expect("a start");
        assert_eq!((start, f), (3, 0));
        let t = replay(&log, start, f, 5);
        assert_eq!(tags(&t), [(3, "a3".into()), (4, "a4".into())]);
        assert_eq!(t.next_command, Some(12));
        // Without the fence in reach, the entries name it.
        assert_eq!(start_point(&log[2..]), Some((3, 0)));
    }

    #[test]
    fn a_zombies_entries_after_the_next_fence_are_void() {
        // A's entry 3 came after B's fence 1: A had lost the partition and wrote on (it will
        // not confirm it, so it never publishes it). C, taking over from B, ignores it.
        let log: Vec<(i64, Record)> = vec![
            (0, fence("a")),
            (1, fence("b")),
            (2, entry("b", 1, 1, Some(11), "b2")),
            (3, entry("a", 0, 0, Some(20), "zombie")),
            (4, entry("b", 1, 2, Some(12), "b4")),
        ];
        let (start, f) = start_point(&log).expect("a start");
        assert_eq!((start, f), (2, 1));
        let t = replay(&log, start, f, 5);
        assert_eq!(tags(&t), [(2, "b2".into()), (4, "b4".into())]);
        assert_eq!(t.next_command, Some(12));
        // The same with the fences out of reach.
        let t = replay(&log[2..], start, f, 5);
        assert_eq!(tags(&t), [(2, "b2".into()), (4, "b4".into())]);
        assert_eq!(start_point(&log[2..]), Some((2, 1)));
    }

    #[test]
    fn an_owner_that_wrote_nothing_hands_on_its_predecessors_work() {
        // B took over at 2 and died before its first entry: A's entry 1 may still be
        // unpublished, and C must look behind B's fence.
        let log: Vec<(i64, Record)> = vec![
            (0, fence("a")),
            (1, entry("a", 0, 0, Some(7), "a1")),
            (2, fence("b")),
        ];
        let (start, f) = start_point(&log).expect("a start");
        assert_eq!((start, f), (0, 0));
        let t = replay(&log, start, f, 3);
        assert_eq!(tags(&t), [(1, "a1".into())]);
        assert_eq!(t.next_command, Some(7));
        // With only B's fence in reach, the start is not known yet.
        assert_eq!(start_point(&log[2..]), None);
    }

    #[test]
    fn the_tail_reader_tells_a_fence_from_an_entry_by_its_head() {
        let head = |r: &Record| {
            let h: Head = serde_json::from_slice(&serde_json::to_vec(r).unwrap()).unwrap();
            (h.kind == FENCE, h.owner)
        };
        assert_eq!(head(&fence("b/1")), (true, "b/1".to_owned()));
        assert_eq!(
            head(&entry("a/1", 0, 0, None, "x")),
            (false, "a/1".to_owned())
        );
    }

    #[test]
    fn many_outcomes_are_split_over_entries_in_their_order() {
        let h = Held {
            owner: "e/1".into(),
            fence: 4,
            published_through: 5,
            next_command: Some(9),
        };
        let outcomes: Vec<Outcome> = (0..200)
            .map(|i| Outcome {
                topic: "user.trades".into(),
                key: format!("usr_{i}"),
                headers: vec![],
                payload: "x".repeat(10_000),
            })
            .collect();
        let entries = encode(&h, outcomes.clone()).expect("encodes");
        assert!(entries.len() > 1);
        let mut back = Vec::new();
        for bytes in &entries {
            assert!(bytes.len() <= MAX_ENTRY_BYTES);
            match serde_json::from_slice::<Record>(bytes).expect("decodes") {
                Record::Entry {
                    fence,
                    next_command,
                    outcomes,
                    ..
                } => {
                    assert_eq!((fence, next_command), (4, Some(9)));
                    back.extend(outcomes);
                }
                Record::Fence { .. } => panic!("an entry"),
            }
        }
        assert_eq!(back, outcomes);
    }

    #[test]
    fn an_outcome_keeps_its_record_and_names_its_event() {
        let mut h = OwnedHeaders::new();
        h = h.insert(Header {
            key: "event_type",
            value: Some("TRADE_EXECUTED".as_bytes()),
        });
        let out = Outgoing::raw(
            UserTopic::Trades,
            "usr_1",
            br#"{"event_id":"exec_1","x":1}"#,
            Some(h),
        );
        let o = Outcome::of(&out);
        assert_eq!(o.event_id().as_deref(), Some("exec_1"));
        let back = o.record().expect("decodes");
        assert_eq!(back.topic(), UserTopic::Trades);
        assert_eq!(back.key(), "usr_1");
        assert_eq!(back.payload(), out.payload());
        let header = back.headers().expect("headers").get(0);
        assert_eq!(header.key, "event_type");
        assert_eq!(header.value, Some("TRADE_EXECUTED".as_bytes()));
        let json = serde_json::to_string(&Record::Entry {
            owner: "e/1".into(),
            fence: 0,
            published_through: 0,
            next_command: Some(3),
            outcomes: vec![o.clone()],
        })
        .expect("encodes");
        assert!(json.starts_with(r#"{"kind":"entry""#), "{json}");
        assert_eq!(
            serde_json::from_str::<Record>(&json).expect("decodes"),
            Record::Entry {
                owner: "e/1".into(),
                fence: 0,
                published_through: 0,
                next_command: Some(3),
                outcomes: vec![o],
            }
        );
    }
}
