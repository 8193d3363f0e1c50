//! `revo models import | list | show | remove` and `revo generate`: the local model registry
//! (events on `model/<name>`, folded into the `models` projection) and its directories under
//! `<data_dir>/models`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use revo_actors::{fold_from_zero, FoldUntil};
use revo_engine::engine::{self, Sampling};
use revo_engine::import::{self, Weights};
use revo_engine::local::LocalModel;
use revo_events::family::models::{valid_model_name, ModelRow, MODEL_STREAM};
use revo_events::{
    AppendRequest, EventFamily, EventMeta, EventStore, ExpectedVersion, ModelEvent,
    ModelsProjection,
};

use crate::cli::GenerateArgs;

/// The registry as the store has it now.
pub async fn load(store: &dyn EventStore) -> anyhow::Result<ModelsProjection> {
    let mut p = ModelsProjection::default();
    fold_from_zero(
        store,
        &mut p,
        FoldUntil::Head {
            wait: Duration::from_secs(5),
        },
        1000,
    )
    .await?;
    Ok(p)
}

fn meta() -> EventMeta {
    EventMeta {
        actor: Some("cli".into()),
        ..Default::default()
    }
}

async fn record(store: &dyn EventStore, name: &str, ev: ModelEvent) -> anyhow::Result<()> {
    let new = ev.to_new_event(meta())?;
    store
        .append(AppendRequest::new(
            MODEL_STREAM,
            name,
            ExpectedVersion::Any,
            vec![new],
        ))
        .await?;
    Ok(())
}

/// A default name from the file: `SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct-q4_1`.
pub fn default_name(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').chars().take(64).collect();
    name
}

/// Imports a GGUF file, or an ONNX export directory (which must then load in ONNX Runtime:
/// `runtime` is where the library is looked for).
/// The registry's row for the name an import would use, if it is registered and its
/// directory is there.
pub async fn already_imported(
    store: &dyn EventStore,
    models_dir: &Path,
    file: &Path,
    name: &Option<String>,
) -> anyhow::Result<Option<ModelRow>> {
    let name = name.clone().unwrap_or_else(|| default_name(file));
    let row = load(store).await?.get(&name).cloned();
    Ok(row.filter(|r| models_dir.join(&r.dir).is_dir()))
}

pub async fn import(
    store: &dyn EventStore,
    models_dir: &Path,
    file: &Path,
    name: Option<String>,
    weights: &str,
    runtime: Option<&Path>,
) -> anyhow::Result<ModelRow> {
    let name = name.unwrap_or_else(|| default_name(file));
    if !valid_model_name(&name) {
        bail!("model name `{name}` is not 1-64 characters of a-z, 0-9, `_` and `-` (use --name)");
    }
    let weights = Weights::parse(weights)
        .ok_or_else(|| anyhow::anyhow!("--weights is keep, f32 or f16, not `{weights}`"))?;
    if load(store).await?.get(&name).is_some() {
        bail!("a model named `{name}` is already imported (revo models remove {name} first)");
    }
    let dest = models_dir.join(&name);
    if dest.exists() {
        bail!(
            "{} exists but is not in the registry (left by an interrupted import?): delete it \
             and import again",
            dest.display()
        );
    }
    let started = Instant::now();
    let file_owned = file.to_owned();
    let dest_owned = dest.clone();
    // CPU-heavy (dequantising, transposing, writing hundreds of MB): off the async threads.
    let export = file.is_dir();
    let runtime = if export {
        Some(engine::locate_runtime(runtime)?)
    } else {
        None
    };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let config = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut last = Instant::now();
        // A bar on a terminal; nothing in logs and pipes.
        let mut progress = |step: &str, done: usize, total: usize| {
            if tty && (last.elapsed() > Duration::from_millis(100) || done == total) {
                last = Instant::now();
                const WIDTH: usize = 30;
                let filled = done.min(total) * WIDTH / total.max(1);
                let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH - filled));
                eprint!("\r{step:<10} [{bar}] {done}/{total}   ");
                let _ = std::io::stderr().flush();
            }
        };
        let Some(runtime) = runtime else {
            return Ok(import::import(
                &file_owned,
                &dest_owned,
                weights,
                &mut progress,
            )?);
        };
        if weights != Weights::F32 {
            bail!("--weights applies to GGUF files; an ONNX export is used as it is");
        }
        let config = revo_engine::export::import_export(&file_owned, &dest_owned, &mut progress)?;
        // An export is registered only if it runs: load it once.
        let loaded = LocalModel::open(&dest_owned, &runtime, 1, revo_engine::engine::Device::Cpu);
        if let Err(e) = loaded {
            let _ = std::fs::remove_dir_all(&dest_owned);
            bail!("{} does not load: {e}", file_owned.display());
        }
        Ok(config)
    })
    .await?
    .with_context(|| format!("importing {}", file.display()))?;
    if tty {
        eprintln!();
    }
    let ev = ModelEvent::Imported {
        name: name.clone(),
        architecture: config.architecture.clone(),
        source: config.source.clone(),
        source_sha256: config.source_sha256.clone(),
        weights: config.weights.clone(),
        parameters: config.parameters,
        context_length: config.context_length as u64,
        dir: name.clone(),
    };
    if let Err(e) = record(store, &name, ev).await {
        // Not registered: leave nothing behind.
        let _ = std::fs::remove_dir_all(&dest);
        return Err(e.context("recording the import"));
    }
    tracing::info!(model = %name, secs = started.elapsed().as_secs_f64(), "model imported");
    load(store)
        .await?
        .get(&name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the import of `{name}` is not visible yet"))
}

pub async fn remove(store: &dyn EventStore, models_dir: &Path, name: &str) -> anyhow::Result<()> {
    if load(store).await?.get(name).is_none() {
        bail!("no model named `{name}` (revo models list)");
    }
    record(
        store,
        name,
        ModelEvent::Removed {
            name: name.to_owned(),
        },
    )
    .await?;
    let dir = models_dir.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

pub fn print_row(out: &mut dyn Write, r: &ModelRow) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<32} {:<8} {:>6.1}M params  ctx {:<6} weights {:<4} from {} (sha256 {}…)  {}",
        r.name,
        r.architecture,
        r.parameters as f64 / 1e6,
        r.context_length,
        r.weights,
        r.source,
        &r.source_sha256[..12.min(r.source_sha256.len())],
        r.imported_at.format("%Y-%m-%d %H:%M")
    )
}

/// `revo generate`: streams a greedy completion to stdout.
pub async fn generate(
    store: &dyn EventStore,
    models_dir: &Path,
    runtime: Option<&Path>,
    settings: &revo_actors::model_thread::ModelSettings,
    args: &GenerateArgs,
) -> anyhow::Result<()> {
    let (name, max_tokens, chat, threads) = (&args.model, args.max_tokens, args.chat, args.threads);
    let device = settings.device;
    let row = load(store)
        .await?
        .get(name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no model named `{name}` (revo models list)"))?;
    let runtime = engine::locate_runtime(runtime)?;
    let dir: PathBuf = models_dir.join(&row.dir);
    let prompt = args.prompt.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut model = LocalModel::open(&dir, &runtime, threads, device)?;
        let text = if chat {
            model.chat_prompt(&prompt)?
        } else {
            prompt
        };
        let started = Instant::now();
        let mut first: Option<Instant> = None;
        let mut stdout = std::io::stdout().lock();
        let g = model.generate(&text, &Sampling::greedy(max_tokens), &[], |piece| {
            first.get_or_insert_with(Instant::now);
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
            true
        })?;
        let end = Instant::now();
        let _ = writeln!(stdout);
        let ttft = first.map_or(0.0, |f| (f - started).as_secs_f64() * 1e3);
        // Decode rate: the tokens after the first, over the time after the first.
        let n = g.completion_tokens;
        let decode = first
            .filter(|_| n > 1)
            .map_or(0.0, |f| (n - 1) as f64 / (end - f).as_secs_f64().max(1e-9));
        let device = model.device();
        eprintln!(
            "[{} prompt + {n} completion tokens, {:?}, {device}; time to first token {ttft:.1} \
             ms, decode {decode:.1} tokens/s]",
            g.prompt_tokens, g.finish,
        );
        Ok(())
    })
    .await?
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_names_are_valid() {
        let n = super::default_name(std::path::Path::new("/x/SmolLM2-135M-Instruct.Q4_1.gguf"));
        assert_eq!(n, "smollm2-135m-instruct-q4_1");
        assert!(revo_events::family::models::valid_model_name(&n));
    }
}
