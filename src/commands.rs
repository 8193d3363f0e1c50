//! Dispatch of `revo` subcommands.

use std::sync::Arc;

use std::io::Write;

use anyhow::bail;
use tracing_subscriber::EnvFilter;

use crate::cli::{
    AuditCommand, BudgetsCommand, Cli, Command, EventsCommand, ModelsCommand, ReplayCommand,
    UsersCommand,
};
use crate::config::{Config, LogFormat, Mode};
use crate::metrics::Metrics;
use crate::{budgets, db, node, registry, replay, serve, users};

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("REVO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests calling in-process) is harmless; ignore it.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let serve_args = match &cli.command {
        Command::Serve(a) => Some(a),
        _ => None,
    };
    let config = Config::load(&cli.global, serve_args)?;
    init_logging(config.log_format);
    let store_metrics = Metrics::new()?.store;
    match cli.command {
        Command::Serve(_) => serve::run(config).await.map(|()| 0),
        Command::Healthcheck { listen } => {
            let addr = crate::healthcheck::local_addr(listen.unwrap_or(config.listen));
            match crate::healthcheck::check(addr, "/health/live") {
                Ok(()) => Ok(0),
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    Ok(1)
                }
            }
        }
        Command::Worker { model } => crate::inference::worker::run(config, model)
            .await
            .map(|()| 0),
        Command::Migrate => match &config.mode {
            Mode::Cluster { database_url, .. } => {
                db::postgres::migrate(database_url).await?;
                println!("Postgres schema is current");
                Ok(0)
            }
            Mode::Embedded { .. } => {
                // Opening the SQLite store applies its migrations.
                let s = node::open_store(&config, store_metrics, false).await?;
                s.close().await;
                println!("SQLite schema is current");
                Ok(0)
            }
        },
        Command::Replay { command } => {
            let s = node::open_store(&config, store_metrics, false).await?;
            let mut out = std::io::stdout().lock();
            let code = match command {
                ReplayCommand::List => replay::list(s.as_ref(), &mut out).await.map(|()| 0),
                ReplayCommand::Rebuild { projection } => {
                    replay::rebuild(s.as_ref(), &projection, &mut out)
                        .await
                        .map(|()| 0)
                }
                ReplayCommand::Verify { projection } => {
                    replay::verify(s.as_ref(), &projection, &mut out)
                        .await
                        .map(|ok| if ok { 0 } else { 1 })
                }
                ReplayCommand::Cost(args) => {
                    let reference = config.reference_model.as_deref().and_then(|name| {
                        let e = config.catalog.entries.iter().find(|e| e.name == name)?;
                        Some((name, e.prices_sheet()))
                    });
                    replay::cost(s.as_ref(), &args, reference, &mut out)
                        .await
                        .map(|()| 0)
                }
            };
            s.close().await;
            code
        }
        Command::Events {
            command: EventsCommand::Tail(args),
        } => {
            if args.from < 0 {
                bail!("--from must be 0 or a position");
            }
            let s = node::open_store(&config, store_metrics, false).await?;
            let mut out = std::io::stdout().lock();
            let r = replay::tail(Arc::clone(&s), &args, &mut out).await;
            s.close().await;
            r.map(|()| 0)
        }
        Command::Audit { command } => {
            let s = node::open_store(&config, store_metrics, false).await?;
            let mut out = std::io::stdout().lock();
            let r = match command {
                AuditCommand::Verify => crate::audit::verify(s.as_ref(), &mut out)
                    .await
                    .map(|ok| if ok { 0 } else { 1 }),
                AuditCommand::Export { from, to } => {
                    crate::audit::export(s.as_ref(), from, to, &mut out)
                        .await
                        .map(|_| 0)
                }
            };
            s.close().await;
            r
        }
        Command::Budgets { command } => {
            // Changes take the data directory (embedded mode: fails clearly while a server
            // holds it); listing only reads.
            let _lock = match command {
                BudgetsCommand::List => None,
                _ => Some(node::DataDirLock::acquire(&config)?),
            };
            let s = node::open_store(&config, store_metrics, false).await?;
            let r = match command {
                BudgetsCommand::Set {
                    scope,
                    id,
                    period,
                    limit_usd,
                } => budgets::set(s.as_ref(), &scope, id, &period, &limit_usd)
                    .await
                    .map(|b| println!("budget {b}: {scope} {id}, {period}, ${limit_usd}")),
                BudgetsCommand::List => {
                    budgets::list(s.as_ref(), &mut std::io::stdout().lock()).await
                }
                BudgetsCommand::Delete { id } => budgets::delete(s.as_ref(), id)
                    .await
                    .map(|()| println!("budget {id} removed")),
            };
            s.close().await;
            r.map(|()| 0)
        }
        Command::Users {
            command:
                UsersCommand::Add {
                    name,
                    roles,
                    password_stdin,
                },
        } => {
            // In embedded mode a running server holds the data directory; this fails clearly.
            let _lock = node::DataDirLock::acquire(&config)?;
            let s = node::open_store(&config, store_metrics, true).await?;
            let r = users::add(
                s.as_ref(),
                config.auth.argon2,
                &name,
                &roles,
                password_stdin,
            )
            .await;
            s.close().await;
            match r? {
                Some(pw) => println!("created user `{name}` with password {pw}"),
                None => println!("created user `{name}`"),
            }
            Ok(0)
        }
        Command::Models { command } => {
            let models_dir = config.models_dir();
            // Changing the registry needs the store to itself in embedded mode.
            let _lock = match &command {
                ModelsCommand::Import { .. } | ModelsCommand::Remove { .. } => {
                    node::DataDirLock::acquire(&config)?
                }
                _ => None,
            };
            let s = node::open_store(&config, store_metrics, true).await?;
            let mut out = std::io::stdout().lock();
            let r = match command {
                ModelsCommand::Import {
                    file,
                    name,
                    weights,
                    if_missing,
                } => {
                    match registry::already_imported(s.as_ref(), &models_dir, &file, &name).await {
                        Ok(Some(row)) if if_missing => (|| {
                            writeln!(out, "already imported:")?;
                            registry::print_row(&mut out, &row)
                        })()
                        .map_err(Into::into),
                        Err(e) => Err(e),
                        _ => registry::import(
                            s.as_ref(),
                            &models_dir,
                            &file,
                            name,
                            &weights,
                            config.ort_dylib.as_deref(),
                        )
                        .await
                        .and_then(|row| {
                            writeln!(out, "imported:")?;
                            registry::print_row(&mut out, &row)?;
                            Ok(())
                        }),
                    }
                }
                ModelsCommand::List => registry::load(s.as_ref()).await.and_then(|reg| {
                    for row in reg.all() {
                        registry::print_row(&mut out, row)?;
                    }
                    Ok(())
                }),
                ModelsCommand::Show { name } => registry::load(s.as_ref()).await.and_then(|reg| {
                    let row = reg
                        .get(&name)
                        .ok_or_else(|| anyhow::anyhow!("no model named `{name}`"))?;
                    registry::print_row(&mut out, row)?;
                    let cfg =
                        std::fs::read_to_string(models_dir.join(&row.dir).join("config.json"))?;
                    writeln!(out, "{cfg}")?;
                    Ok(())
                }),
                ModelsCommand::Remove { name } => registry::remove(s.as_ref(), &models_dir, &name)
                    .await
                    .and_then(|()| Ok(writeln!(out, "removed `{name}`")?)),
            };
            s.close().await;
            r.map(|()| 0)
        }
        Command::Generate(args) => {
            let s = node::open_store(&config, store_metrics, true).await?;
            let r = registry::generate(
                s.as_ref(),
                &config.models_dir(),
                config.ort_dylib.as_deref(),
                &config.models,
                &args,
            )
            .await;
            s.close().await;
            r.map(|()| 0)
        }
    }
}
