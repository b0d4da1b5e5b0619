//! `central-hub api-token create|list|revoke`: bearer tokens of the HQ API.

use anyhow::Context;
use clap::Subcommand;

use super::{Database, rfc3339_or_dash, site_opt};

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token and print it once.
    Create {
        /// hq:read or hq:write.
        #[arg(long, value_parser = ["hq:read", "hq:write"])]
        scope: String,
        /// Limit the token to one site.
        #[arg(long)]
        site: Option<String>,
        #[arg(long, default_value = "hq")]
        name: String,
        #[command(flatten)]
        db: Database,
    },
    /// List every token: id (the first 8 hex digits of its hash), name, scope, site,
    /// created, last used (to the minute), revoked.
    List {
        #[command(flatten)]
        db: Database,
    },
    /// Revoke every live token named NAME; every hub instance refuses it within 2 s.
    Revoke {
        name: String,
        #[command(flatten)]
        db: Database,
    },
}

pub(crate) async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            scope,
            site,
            name,
            db,
        } => create(&scope, site, &name, &db).await,
        TokenCommand::List { db } => list(&db).await,
        TokenCommand::Revoke { name, db } => {
            let pool = db.connect().await?;
            let n = central_hub::auth::revoke_tokens(&pool, &name)
                .await
                .context("revoking")?;
            anyhow::ensure!(n > 0, "no live token named {name:?} (see api-token list)");
            println!(
                "{n} token(s) named {name:?} revoked; every hub instance refuses them within {} s",
                central_hub::auth::TOKEN_CACHE_TTL.as_secs()
            );
            Ok(())
        }
    }
}

async fn create(
    scope: &str,
    site: Option<String>,
    name: &str,
    db: &Database,
) -> anyhow::Result<()> {
    let site = site_opt(site)?;
    let pool = db.connect().await?;
    let same_name = central_hub::auth::list_tokens(&pool)
        .await
        .context("listing tokens")?
        .iter()
        .filter(|t| t.name == name && t.revoked_at.is_none())
        .count();
    let token = central_hub::api::create_token(&pool, name, scope, site.as_ref())
        .await
        .context("creating the token")?;
    println!("{token}");
    eprintln!("token {name:?} ({scope}) created; it is shown only this once");
    if same_name > 0 {
        eprintln!(
            "note: {same_name} other live token(s) are named {name:?}; `api-token revoke {name}` revokes them all"
        );
    }
    Ok(())
}

async fn list(db: &Database) -> anyhow::Result<()> {
    let pool = db.connect().await?;
    let tokens = central_hub::auth::list_tokens(&pool)
        .await
        .context("listing tokens")?;
    println!(
        "{:<8}  {:<24}  {:<8}  {:<20}  {:<25}  {:<25}  REVOKED",
        "ID", "NAME", "SCOPE", "SITE", "CREATED", "LAST USED"
    );
    for t in &tokens {
        println!(
            "{:<8}  {:<24}  {:<8}  {:<20}  {:<25}  {:<25}  {}",
            t.id,
            t.name,
            t.scope,
            t.site.as_deref().unwrap_or("(all)"),
            rfc3339_or_dash(Some(t.created_at)),
            rfc3339_or_dash(t.last_used_at),
            rfc3339_or_dash(t.revoked_at)
        );
    }
    eprintln!(
        "{} token(s), {} live",
        tokens.len(),
        tokens.iter().filter(|t| t.revoked_at.is_none()).count()
    );
    Ok(())
}
