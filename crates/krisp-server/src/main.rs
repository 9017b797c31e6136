//! `krisp-server`: the license and account backend. See README.md.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use krisp_server::{Config, KeySource, Limits, Plan, TlsFiles};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(version, about = "Krisp license and account backend")]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "KRISP_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// sqlite://PATH (default, created if missing) or postgres://USER:PASS@HOST/DB.
    #[arg(long, env = "KRISP_DATABASE_URL", default_value = "sqlite://krisp.db")]
    database_url: String,
    /// TLS certificate chain (PEM). With --tls-key, serves HTTPS (TLS 1.2/1.3 only).
    #[arg(long, env = "KRISP_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "KRISP_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Signing key file; created with a fresh key if missing.
    #[arg(
        long,
        env = "KRISP_SIGNING_KEY",
        default_value = "krisp-signing-keys.txt"
    )]
    signing_key: PathBuf,
    /// Read the signing keys from this environment variable instead of a file
    /// (`<kid> <base64url secret>` entries separated by newlines or ';', the last signs).
    #[arg(long, conflicts_with = "signing_key")]
    signing_key_env: Option<String>,
    /// SMTP relay, e.g. smtps://user:pass@mail.example.com or smtp://localhost:25.
    /// Without it, sign-in codes are written to the log (development).
    #[arg(long, env = "KRISP_SMTP_URL", hide_env_values = true)]
    smtp_url: Option<String>,
    /// Sender of sign-in mails.
    #[arg(
        long,
        env = "KRISP_MAIL_FROM",
        default_value = "Krisp <no-reply@localhost>"
    )]
    mail_from: String,
    /// Database connections in the pool.
    #[arg(long, default_value_t = 16)]
    max_connections: u32,
    /// Per-IP request budget per second on this instance (0 = off).
    #[arg(long, default_value_t = Limits::default().requests_per_sec_per_ip)]
    requests_per_sec_per_ip: u32,
    /// Sign-in codes one address may request per 10 minutes (all instances).
    #[arg(long, default_value_t = Limits::default().codes_per_email)]
    codes_per_email: i64,
    /// Sign-in requests plus failed code checks one IP may make per 10 minutes (all
    /// instances); raise it for large offices behind one NAT address.
    #[arg(long, default_value_t = Limits::default().auth_per_ip)]
    auth_per_ip: i64,
    /// An IP going past this many in 10 minutes is banned (must exceed --auth-per-ip).
    #[arg(long, default_value_t = Limits::default().ban_after)]
    ban_after: i64,
    /// Ban length, seconds.
    #[arg(long, default_value_t = Limits::default().ban_secs)]
    ban_secs: i64,
    /// Allow plain HTTP on a non-loopback address (only behind a TLS-terminating proxy).
    #[arg(long)]
    allow_plain_http: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Append a new signing key to the key file; it signs from the next start. Old keys stay
    /// published at /v1/keys so existing tokens keep verifying.
    RotateKey,
    /// Set an account's personal plan (creates the account if needed), e.g. after payment.
    SetPlan {
        /// The account's e-mail address.
        #[arg(long)]
        email: String,
        /// `trial` or `paid`.
        #[arg(long, value_parser = ["trial", "paid"])]
        plan: String,
        /// Devices allowed.
        #[arg(long)]
        seats: i64,
        /// End of the trial or paid period, Unix seconds (required for a trial).
        #[arg(long)]
        until: Option<i64>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    let cli = Cli::parse();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs() as i64;
    if let Some(Command::SetPlan {
        email,
        plan,
        seats,
        until,
    }) = &cli.command
    {
        let plan = match (plan.as_str(), until) {
            ("trial", Some(ends_at)) => Plan::Trial {
                ends_at: *ends_at,
                seats: *seats,
            },
            ("trial", None) => bail!("--plan trial needs --until"),
            _ => Plan::Paid {
                seats: *seats,
                ends_at: *until,
            },
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let id = rt
            .block_on(krisp_server::set_plan(&cli.database_url, email, &plan, now))
            .with_context(|| format!("setting the plan of {email}"))?;
        println!("account {id} ({email}): {plan:?}");
        return Ok(());
    }
    if let Some(Command::RotateKey) = cli.command {
        let kid = krisp_server::append_new_key(&cli.signing_key, now)
            .with_context(|| format!("rotating key in {}", cli.signing_key.display()))?;
        println!(
            "new signing key {kid} appended to {}",
            cli.signing_key.display()
        );
        return Ok(());
    }
    let tls = match (cli.tls_cert, cli.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    if cli.codes_per_email < 1
        || cli.auth_per_ip < 1
        || cli.ban_after <= cli.auth_per_ip
        || cli.ban_secs < 1
    {
        bail!("rate limits must be positive, and --ban-after larger than --auth-per-ip");
    }
    if tls.is_none() && !cli.listen.ip().is_loopback() && !cli.allow_plain_http {
        bail!(
            "refusing plain HTTP on {}: pass --tls-cert/--tls-key, or --allow-plain-http behind a TLS proxy",
            cli.listen
        );
    }
    let config = Config {
        listen: cli.listen,
        database_url: cli.database_url,
        tls,
        signing_key: match cli.signing_key_env {
            Some(var) => KeySource::Env(var),
            None => KeySource::File(cli.signing_key),
        },
        smtp_url: cli.smtp_url,
        mail_from: cli.mail_from,
        max_connections: cli.max_connections,
        limits: Limits {
            requests_per_sec_per_ip: cli.requests_per_sec_per_ip,
            codes_per_email: cli.codes_per_email,
            auth_per_ip: cli.auth_per_ip,
            ban_after: cli.ban_after,
            ban_secs: cli.ban_secs,
            ..Limits::default()
        },
        ..Config::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(krisp_server::serve(config))
        .context("krisp-server failed")
}
