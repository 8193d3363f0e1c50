//! `revo users add`: creating a user from the command line, against the configured store.

use std::io::Read;

use anyhow::{bail, Context};
use revo_events::{EventMeta, EventStore, Role};

use crate::identity::{self, password};

/// Creates `name` with `roles`. Returns the generated password when none was given.
pub async fn add(
    store: &dyn EventStore,
    cost: password::Argon2Cost,
    name: &str,
    roles: &[String],
    password_stdin: bool,
) -> anyhow::Result<Option<String>> {
    let roles = roles
        .iter()
        .map(|r| {
            Role::parse(r).ok_or_else(|| {
                anyhow::anyhow!("unknown role `{r}` (roles: admin, developer, viewer)")
            })
        })
        .collect::<anyhow::Result<Vec<Role>>>()?;
    let (pw, generated) = if password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the password from stdin")?;
        let s = s.trim_end_matches(['\n', '\r']).to_owned();
        if s.is_empty() {
            bail!("no password on stdin");
        }
        (s, false)
    } else {
        (password::generate(), true)
    };
    let meta = EventMeta {
        actor: Some("cli".into()),
        ..Default::default()
    };
    let hasher = password::Hasher::new(cost, 1, 0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ev = identity::new_user(&hasher, name, pw.clone(), &roles)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    identity::append_new_user(store, ev, &meta)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(generated.then_some(pw))
}
