//! What admitting one request costs in-process: authentication (JWT or API key) against the
//! in-memory directory, the RBAC check and the rate limiter, as `src/http/access.rs` runs them.
//! `cargo bench --bench admission`. The HTTP figures are in `load/http/bench.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // bench setup

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use revo::db::sqlite::SqliteStoreConfig;
use revo::db::SqliteStore;
use revo::identity::password::Hasher;
use revo::identity::rbac::Permission;
use revo::identity::throttle::LoginThrottle;
use revo::identity::token::{JwtKey, TokenKeys};
use revo::identity::{Identity, IdentitySettings, NewKeyRequest, RoleLimits};
use revo_actors::kit::{HealthBoard, Supervisor};
use revo_actors::LiveView;
use revo_events::{Directory, EventMeta, EventStore, Role};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Fixture {
    identity: Identity,
    jwt: String,
    key: String,
    _dir: std::path::PathBuf,
}

fn setup(rt: &tokio::runtime::Runtime) -> Fixture {
    rt.block_on(async {
        let dir =
            std::env::temp_dir().join(format!("revo-bench-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let metrics = revo::metrics::Metrics::new().unwrap();
        let store: Arc<dyn EventStore> =
            SqliteStore::open(SqliteStoreConfig::in_dir(&dir), metrics.store)
                .await
                .unwrap();
        let tasks = TaskTracker::new();
        let sup = Supervisor::new(
            tasks.clone(),
            CancellationToken::new(),
            HealthBoard::default(),
        );
        let view = LiveView::<Directory>::start(
            store.clone(),
            store.as_ref(),
            Duration::from_millis(500),
            &sup,
        )
        .await
        .unwrap();
        let tokens = TokenKeys::new(
            &[JwtKey {
                kid: "k".into(),
                secret: vec![7; 32],
            }],
            "k",
            Duration::from_secs(3600),
        )
        .unwrap();
        let identity = Identity::new(
            store,
            view,
            IdentitySettings {
                tokens,
                // Limits far above what the loop asks, so every check admits.
                limits: RoleLimits {
                    admin: u32::MAX,
                    developer: u32::MAX,
                    viewer: u32::MAX,
                },
                throttle: LoginThrottle::new(5, 50, Duration::from_secs(900)),
                hasher: std::sync::Arc::new(Hasher::with_defaults().unwrap()),
                tickets: revo::identity::ticket::Tickets::new(&[7; 32]),
                max_keys_per_user: 100,
            },
            "bench",
            tasks,
        );
        identity
            .create_user(
                "bench",
                "bench-password".into(),
                &[Role::Developer],
                EventMeta::default(),
            )
            .await
            .unwrap();
        let login = identity
            .login("bench", "bench-password", None, EventMeta::default())
            .await
            .unwrap();
        let caller = identity
            .authenticate(Some(&format!("Bearer {}", login.token)))
            .unwrap();
        let (_, key) = identity
            .issue_key(
                &caller,
                NewKeyRequest {
                    name: "bench".into(),
                    roles: None,
                    rate_limit_per_minute: Some(u32::MAX),
                    expires_in_secs: None,
                },
                EventMeta::default(),
            )
            .await
            .unwrap();
        Fixture {
            identity,
            jwt: format!("Bearer {}", login.token),
            key: format!("Bearer {key}"),
            _dir: dir,
        }
    })
}

fn admit(identity: &Identity, header: &str) -> bool {
    let p = identity.authenticate(Some(header)).unwrap();
    p.can(Permission::SelfRead) && identity.rate_limit(&p).allowed
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let f = setup(&rt);
    let mut g = c.benchmark_group("admission");
    g.bench_function("jwt", |b| b.iter(|| admit(&f.identity, &f.jwt)));
    g.bench_function("api_key", |b| b.iter(|| admit(&f.identity, &f.key)));
    g.finish();
    let _ = std::fs::remove_dir_all(&f._dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
