//! Questions the HTTP query API asks the engines, answered by the pipeline thread between polled
//! batches (the engines are owned by that thread; HTTP never takes its lock).
//!
//! HTTP decides what it can from `status::Status` first (a partition not assigned here, a shard
//! still restoring) and sends the rest through a bounded channel; each question carries a
//! one-shot reply. An answer waits at most one polled batch, longer during a blocking checkpoint;
//! HTTP gives up after its own timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use serde::Serialize;
use tokio::sync::oneshot;

use crate::core::breakdown::{self, BreakdownReport};
use crate::core::forecast::{self, Backtest, Forecast};
use crate::core::ids::kafka_partition;
use crate::core::xpart;
use crate::core::{Engine, Funnel, FunnelReport, ProspectIx, ProspectView, Span, Ts};

use super::State;
use super::shard::Shard;

/// What HTTP asks.
#[derive(Debug)]
pub enum Question {
    /// One prospect, by id.
    Prospect(String),
    /// The funnel of every shard this instance holds.
    Funnel,
    /// The funnel of every shard held, split by this `[breakdowns]` dimension.
    Breakdown(String),
    /// The forecast over the shards this instance holds, with this horizon.
    Forecast(Span),
}

/// What the pipeline answers.
#[derive(Debug)]
pub enum Answer {
    Prospect(Box<ProspectAnswer>),
    /// The shard is here, the prospect is not in it.
    Unknown {
        partition: i32,
    },
    /// The shard is not (or no longer) on this instance.
    NotHere {
        partition: i32,
    },
    Funnel(Box<FunnelAnswer>),
    Forecast(Box<ForecastAnswer>),
    Breakdown(Box<BreakdownAnswer>),
    /// The journey has no dimension of that name; these are its dimensions.
    UnknownDimension {
        known: Vec<String>,
    },
}

/// One dimension's breakdown summed over the shards this instance holds.
#[derive(Debug, Serialize)]
pub struct BreakdownAnswer {
    pub shards: Vec<i32>,
    #[serde(flatten)]
    pub breakdown: BreakdownReport,
}

/// The forecast at the latest watermark of the shards held, and its backtest one horizon earlier.
#[derive(Debug, Serialize)]
pub struct ForecastAnswer {
    pub shards: Vec<i32>,
    pub forecast: Option<Forecast>,
    pub backtest: Option<Backtest>,
}

/// One prospect as its shard's state holds it, and which state that is.
#[derive(Debug, Serialize)]
pub struct ProspectAnswer {
    /// The input partition (shard) that owns the prospect.
    pub partition: i32,
    #[serde(flatten)]
    pub view: ProspectView,
    /// The shard's state the answer comes from.
    pub state: StateAt,
    /// With `[identity] resolve`: every id linked to the prospect (the one asked for among
    /// them; the answer is the canonical prospect's); without, just the id.
    pub linked_ids: Vec<String>,
}

/// Where a shard's state stands: its watermark and the next input offset per topic.
#[derive(Debug, Serialize)]
pub struct StateAt {
    /// RFC 3339; `null` until the shard's clock is confirmed.
    pub watermark: Option<String>,
    pub positions: BTreeMap<String, i64>,
}

/// The funnel summed over the shards this instance holds.
#[derive(Debug, Serialize)]
pub struct FunnelAnswer {
    /// The shards (input partitions) the figures cover.
    pub shards: Vec<i32>,
    pub prospects: u64,
    /// `[insight] alert_horizon_days` of the journey the rules are measured with.
    pub alert_horizon_days: f64,
    #[serde(flatten)]
    pub funnel: FunnelReport,
}

/// A question with its reply.
pub struct Query {
    pub question: Question,
    pub reply: oneshot::Sender<Answer>,
}

/// The asking side, held by HTTP.
#[derive(Clone)]
pub struct Queries {
    tx: SyncSender<Query>,
    partitions: Arc<AtomicU32>,
}

/// The answering side, handed to the pipeline.
pub struct Inbox {
    rx: Receiver<Query>,
    /// The input topics' partition count, set once the pipeline has checked them (0 before).
    pub(super) partitions: Arc<AtomicU32>,
}

/// Why a question got no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// Too many questions waiting.
    Busy,
    /// The pipeline is not running (stopped, or not started yet).
    Stopped,
}

/// A channel for at most `capacity` waiting questions.
pub fn channel(capacity: usize) -> (Queries, Inbox) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let partitions = Arc::new(AtomicU32::new(0));
    (Queries { tx, partitions: Arc::clone(&partitions) }, Inbox { rx, partitions })
}

impl Queries {
    /// The partition (shard) that owns `id`: the inputs' partitioner (murmur2, as Kafka's
    /// default for keyed records). `None` until the pipeline knows the partition count.
    pub fn partition_of(&self, id: &str) -> Option<i32> {
        let n = self.partitions.load(Ordering::Acquire);
        (n > 0).then(|| kafka_partition(id.as_bytes(), n) as i32)
    }

    /// Sends a question; the answer arrives on the returned receiver.
    pub fn ask(&self, question: Question) -> Result<oneshot::Receiver<Answer>, Unanswered> {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(Query { question, reply }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(Unanswered::Busy),
            Err(TrySendError::Disconnected(_)) => Err(Unanswered::Stopped),
        }
    }
}

impl Inbox {
    /// Sets the input partition count (the pipeline does, once it has checked the topics).
    pub fn set_partitions(&self, n: usize) {
        self.partitions.store(n as u32, Ordering::Release);
    }
}

impl State {
    /// Answers every waiting question (between polled batches).
    pub(super) fn answer_queries(&mut self) {
        let Some(inbox) = &self.queries else { return };
        while let Ok(Query { question, reply }) = inbox.rx.try_recv() {
            let answer = match question {
                Question::Prospect(id) => self.prospect(&id, inbox.partitions.load(Ordering::Acquire)),
                Question::Funnel => self.funnel(),
                Question::Forecast(horizon) => self.forecast(horizon),
                Question::Breakdown(dimension) => self.breakdown(&dimension),
            };
            // The asker may have given up (timeout): nothing to do.
            let _ = reply.send(answer);
        }
    }

    /// The prospect from the shard its id hashes to; with identity resolution across
    /// partitions, from the partition that shard's identity map homes its canonical id on (a
    /// 421 for that partition when it is not held here); else from any other shard held here
    /// (inputs keyed by something else than the prospect id land elsewhere). With
    /// `[identity] resolve`, any id linked to the prospect answers with the canonical one.
    fn prospect(&self, id: &str, partitions: u32) -> Answer {
        let n = partitions.max(1);
        let hashed = kafka_partition(id.as_bytes(), n) as i32;
        // Where the hashed shard's map routes the id: its canonical id's home partition.
        let routed = self.shards.get(&hashed).map(|s| s.engine.linked_ids(id).0).map_or((hashed, id), |c| {
            let home = xpart::home(c, n) as i32;
            if home == hashed { (hashed, id) } else { (home, c) }
        });
        fn find<'a>(p: i32, s: &'a Shard, key: &str) -> Option<(i32, &'a Shard, ProspectIx)> {
            // A redirect (a prospect folded into another; on a shard that received a
            // transfer, the transferred id) is not an answer: the canonical prospect is.
            let ix = s.engine.find(s.engine.linked_ids(key).0)?;
            (!s.engine.prospect(ix).has(crate::core::prospect::REDIRECT)).then_some((p, s, ix))
        }
        let found = self
            .shards
            .get(&hashed)
            .and_then(|s| find(hashed, s, id))
            .or_else(|| {
                let (home, canonical) = routed;
                self.shards.get(&home).filter(|_| home != hashed).and_then(|s| find(home, s, canonical))
            })
            .or_else(|| {
                self.shards.iter().filter(|(p, _)| **p != hashed && **p != routed.0).find_map(|(p, s)| find(*p, s, id))
            });
        let Some((partition, shard, ix)) = found else {
            let (home, _) = routed;
            return if self.shards.contains_key(&home) {
                Answer::Unknown { partition: home }
            } else {
                Answer::NotHere { partition: home }
            };
        };
        let watermark = shard.engine.watermark();
        let view = shard.engine.view(ix, Some(watermark).filter(|w| !w.is_none()));
        let state = StateAt {
            watermark: (!watermark.is_none()).then(|| watermark.to_string()),
            positions: shard.position_map(&self.settings.kafka.input_topics),
        };
        let linked_ids = shard.engine.linked_ids(id).1.into_iter().map(String::from).collect();
        Answer::Prospect(Box::new(ProspectAnswer { partition, view, state, linked_ids }))
    }

    fn forecast(&self, horizon: Span) -> Answer {
        let engines: Vec<&Engine> = self.shards.values().map(|s| &s.engine).collect();
        let opts = forecast::Options { horizon, baseline: forecast::default_baseline(&self.journey) };
        let now = forecast::now(&engines);
        let shards = self.shards.keys().copied().collect();
        let (forecast, backtest) = match now {
            Some(now) => {
                (forecast::forecast(&engines, now, &opts), forecast::backtest(&engines, Ts(now.0 - horizon.0), &opts))
            }
            None => (None, None),
        };
        Answer::Forecast(Box::new(ForecastAnswer { shards, forecast, backtest }))
    }

    fn breakdown(&self, dimension: &str) -> Answer {
        let j = &self.journey;
        let Some(d) = j.breakdowns.iter().position(|d| d.name == dimension) else {
            return Answer::UnknownDimension { known: j.breakdowns.iter().map(|d| d.name.clone()).collect() };
        };
        let tables = breakdown::sum_tables(j, self.shards.values().map(|s| &s.engine));
        let breakdown = tables[d].report(j, &j.breakdowns[d], crate::core::funnel::MIN_SAMPLE);
        let shards = self.shards.keys().copied().collect();
        Answer::Breakdown(Box::new(BreakdownAnswer { shards, breakdown }))
    }

    fn funnel(&self) -> Answer {
        let mut total = Funnel::new(&self.journey);
        let mut prospects = 0u64;
        for shard in self.shards.values() {
            total.absorb(shard.engine.funnel());
            // People, not records (a redirect is in no stage): as `microfunnel_prospects_total`.
            prospects += shard.engine.funnel().in_stage.iter().sum::<u64>();
        }
        let shards = self.shards.keys().copied().collect();
        let alert_horizon_days = self.journey.alert_horizon.0 as f64 / crate::core::time::MS_PER_DAY as f64;
        Answer::Funnel(Box::new(FunnelAnswer {
            shards,
            prospects,
            alert_horizon_days,
            funnel: total.report(&self.journey),
        }))
    }
}
