//! A cluster on one machine (deploy/cluster/cluster.sh: 3 edges, 2 model workers, HAProxy, over
//! the machine's Postgres and NATS) under the mixed load of `revo-load cluster`, while its
//! processes are killed or restarted. Correctness only: the figures are the benchmark's
//! (load/cluster/bench.sh, docs/benchmarks.md).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)] // test code: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection;

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const NATS: &str = "nats://127.0.0.1:4222";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `revo` binary cargo built beside this test (target/<profile>/revo).
fn revo_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("revo");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --bin revo",
        bin.display()
    );
    bin
}

/// Four consecutive free loopback ports (the balancer, then three edges).
fn free_ports() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = l.local_addr().unwrap().port();
        drop(l);
        if base < 60000
            && (1..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
}

struct Cluster {
    dir: tempdir::Dir,
    db: String,
    prefix: String,
    url: String,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p =
                std::env::temp_dir().join(format!("revo-{tag}-{}", uuid::Uuid::now_v7().simple()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Cluster {
    async fn up(tag: &str) -> Cluster {
        let db = format!("revo_{tag}_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{PG}/postgres"))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await
            .unwrap();
        let prefix = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[18..]);
        let dir = tempdir::Dir::new(tag);
        let port = free_ports();
        let out = Command::new(repo().join("deploy/cluster/cluster.sh"))
            .args(["up".as_ref(), dir.0.as_os_str()])
            .env("REVO", revo_bin())
            .env("REVO_DATABASE_URL", format!("{PG}/{db}"))
            .env("REVO_NATS_URL", NATS)
            .env("REVO_NATS_PREFIX", &prefix)
            .env("LB_PORT", port.to_string())
            .env("REVO_DATABASE_MAX_CONNECTIONS", "6")
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let c = Cluster {
            dir,
            db,
            prefix,
            url,
        };
        assert!(out.status.success(), "cluster.sh up failed:\n{}", c.logs());
        c
    }

    fn ctl(&self, cmd: &str, process: &str) {
        let ok = Command::new(repo().join("deploy/cluster/cluster.sh"))
            .args([cmd.as_ref(), self.dir.0.as_os_str(), process.as_ref()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "cluster.sh {cmd} {process} failed:\n{}", self.logs());
    }

    fn admin_password(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("admin-password"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir.0) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    s += &format!("== {}\n", p.display());
                    for l in tail.into_iter().rev() {
                        s += l;
                        s.push('\n');
                    }
                }
            }
        }
        s
    }

    /// `revo-load cluster` through the balancer, in the background.
    fn load(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_revo-load"))
            .args([
                "cluster",
                "--url",
                &self.url,
                "--admin-password",
                &self.admin_password(),
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    /// `revo replay verify NAME` against the cluster's store: exit 0 when the live read model
    /// matches a rebuild from the log.
    fn verify(&self, projection: &str) {
        let out = Command::new(revo_bin())
            .args(["replay", "verify", projection])
            .env("REVO_DATABASE_URL", format!("{PG}/{}", self.db))
            .env("REVO_NATS_URL", NATS)
            .env("REVO_NATS_PREFIX", &self.prefix)
            .env("REVO_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "replay verify {projection}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("deploy/cluster/cluster.sh"))
            .args(["down".as_ref(), self.dir.0.as_os_str()])
            .status();
        let (db, stream) = (
            self.db.clone(),
            format!("{}_EVENTS", self.prefix.to_uppercase()),
        );
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&format!("{PG}/postgres")).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
                if let Ok(c) = async_nats::connect(NATS).await {
                    let _ = async_nats::jetstream::new(c).delete_stream(stream).await;
                }
            })
        })
        .join();
    }
}

fn finish(load: Child, c: &Cluster) -> Value {
    let out = load.wait_with_output().unwrap();
    assert!(out.status.success(), "revo-load failed\n{}", c.logs());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn n(v: &Value, p: &str) -> f64 {
    v.pointer(p)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{p} missing in {v}"))
}

const LOAD: &[&str] = &[
    "--users",
    "20",
    "--ws-per-user",
    "4",
    "--room-size",
    "10",
    "--duration-s",
    "30",
    "--requests-per-min",
    "600",
    "--generate-share",
    "0.1",
    "--workflows-per-min",
    "20",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_an_edge_and_a_worker_under_load_loses_nothing_acknowledged() {
    let c = Cluster::up("kill").await;
    let load = c.load(LOAD);
    // Mid-run: an edge and a worker die without a word; the edge comes back later.
    tokio::time::sleep(Duration::from_secs(14)).await;
    c.ctl("kill", "edge-2");
    c.ctl("kill", "worker-1");
    tokio::time::sleep(Duration::from_secs(6)).await;
    c.ctl("start", "edge-2");
    let r = finish(load, &c);
    eprintln!("{r:#}");
    // Clients that retry lose nothing: every request got its answer, every acknowledged
    // message reached every connection of its room (those on the dead edge resumed by offset
    // elsewhere), every run finished.
    assert_eq!(n(&r, "/http/failed"), 0.0, "{r:#}\n{}", c.logs());
    assert!(n(&r, "/http/requests") > 200.0, "{r:#}");
    assert_eq!(n(&r, "/ws/missing"), 0.0, "{r:#}");
    assert!(n(&r, "/ws/messages_acked") > 20.0, "{r:#}");
    assert!(
        n(&r, "/ws/reconnects") > 0.0,
        "the dead edge's sockets reconnected: {r:#}"
    );
    assert!(n(&r, "/workflows/started") > 3.0, "{r:#}");
    assert_eq!(
        n(&r, "/workflows/completed"),
        n(&r, "/workflows/started"),
        "{r:#}"
    );
    assert_eq!(n(&r, "/generations/local_share"), 1.0, "{r:#}");
    // The ledger and the runs rebuilt from the log match what the edges folded live.
    c.verify("ledger");
    c.verify("workflow_runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_edge_fails_no_request() {
    let c = Cluster::up("roll").await;
    // No client retries: a request the cluster fails is counted.
    let mut args = LOAD.to_vec();
    args.push("--no-retry");
    let load = c.load(&args);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let started = Instant::now();
    for edge in ["edge-1", "edge-2", "edge-3"] {
        // SIGTERM, the drain, the start and readiness; then the next.
        c.ctl("restart", edge);
    }
    eprintln!("rolling restart took {:?}", started.elapsed());
    let r = finish(load, &c);
    eprintln!("{r:#}");
    assert_eq!(n(&r, "/http/failed"), 0.0, "{r:#}\n{}", c.logs());
    assert!(n(&r, "/http/requests") > 200.0, "{r:#}");
    assert_eq!(n(&r, "/ws/missing"), 0.0, "{r:#}");
    assert!(n(&r, "/ws/reconnects") > 0.0, "{r:#}");
    assert_eq!(
        n(&r, "/workflows/completed"),
        n(&r, "/workflows/started"),
        "{r:#}"
    );
}
