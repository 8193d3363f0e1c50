//! A model's thread (`src/inference/thread.rs`) as the edge and the workers use it: concurrent
//! jobs decode together and each gets the reference text; the cache budget holds jobs back
//! until they fit; a job whose requester left stops without disturbing the others.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use revo_actors::model_thread::ModelThread;
use revo_actors::model_thread::{Event, Job, ModelSettings, Outcome};
use revo_engine::engine::Sampling;
use tokio::sync::mpsc;

fn job(prompt: &str, max_tokens: usize) -> (Job, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt: prompt.to_owned(),
        messages: None,
        sampling: Sampling::greedy(max_tokens),
        stop: Vec::new(),
        events: tx,
        received: Instant::now(),
    };
    (job, rx)
}

async fn outcome(mut rx: mpsc::UnboundedReceiver<Event>) -> Outcome {
    let mut text = String::new();
    loop {
        match rx.recv().await.unwrap() {
            Event::Text(t) => text.push_str(&t),
            Event::Logprobs(_) => {}
            Event::Done(done) => {
                let o = done.unwrap();
                assert_eq!(o.text, text, "the pieces make the text");
                return o;
            }
        }
    }
}

/// Runs the reference cases at once on a thread with `settings`; the most sequences seen
/// decoding together.
async fn run_cases(dir: &std::path::Path, settings: &ModelSettings) -> usize {
    let thread = ModelThread::spawn("m", dir.to_owned(), None, settings, "t".into()).unwrap();
    let cases = cases();
    let mut waits = Vec::new();
    for c in &cases {
        let (j, rx) = job(
            c["rendered_prompt"].as_str().unwrap(),
            c["max_tokens"].as_u64().unwrap() as usize,
        );
        thread.submit("m", j).unwrap();
        waits.push(outcome(rx));
    }
    let stats = thread.stats.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    let watch = tokio::spawn(async move {
        let mut most = 0;
        while !finished.load(Ordering::Relaxed) {
            most = most.max(stats.active.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        most
    });
    let outcomes = futures::future::join_all(waits).await;
    done.store(true, Ordering::Relaxed);
    for (c, o) in cases.iter().zip(&outcomes) {
        assert_eq!(o.text, c["completion"].as_str().unwrap(), "{}", c["prompt"]);
    }
    watch.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_batch_within_the_cache_budget_and_leave_alone() {
    let data = TempDir::new();
    let (code, _, err) = output(&mut revo_cmd(
        &[
            "models",
            "import",
            smollm2().to_str().unwrap(),
            "--name",
            "m",
        ],
        &[("REVO_DATA_DIR", data.path().to_str().unwrap())],
    ));
    assert_eq!(code, 0, "{err}");
    let dir = data.path().join("models/m");
    let base = ModelSettings {
        threads: 1,
        ..ModelSettings::default()
    };
    // Room for all: they decode together.
    let together = run_cases(&dir, &base).await;
    assert!(together >= 3, "at most {together} together");
    // Room for one at a time (each needs 52-102 positions; one bigger than the budget runs
    // alone): one by one, same texts.
    let tight = ModelSettings {
        max_batch_tokens: 60,
        ..base.clone()
    };
    let alone = run_cases(&dir, &tight).await;
    assert!(alone <= 1, "{alone} together within a budget for one");

    // A requester that leaves stops its job; the job beside it finishes unharmed.
    let thread = ModelThread::spawn("m", dir.clone(), None, &base, "t".into()).unwrap();
    let (long, mut long_rx) = job("Once upon a time", 400);
    let (short, short_rx) = job("Once upon a time", 48);
    thread.submit("m", long).unwrap();
    thread.submit("m", short).unwrap();
    assert!(matches!(long_rx.recv().await, Some(Event::Text(_))));
    drop(long_rx);
    let o = outcome(short_rx).await;
    assert_eq!(
        o.text,
        case("Once upon a time")["completion"].as_str().unwrap()
    );
    tokio::time::timeout(Duration::from_secs(30), async {
        while thread.stats.active.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the abandoned job stopped");
}
