//! Scenario `console` (issue 12): what open console pages cost netd. netd runs a small
//! topology with `--http`; netd's CPU time is measured over [`WINDOW`] with no page open,
//! then with [`PAGES`] event streams open (each signed in as the page is, reading every
//! snapshot, four a second). Target: the pages cost under 1% of a core. The kernel has no
//! column: it has no console.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::Ctx;
use crate::measure::Cpu;
use crate::netd_side::NetdBed;
use crate::proc::{check_stop, sleep};
use crate::report::{Figures, Side, Target};
use crate::scenarios::Outcome;
use crate::topo::BenchTopo;

const NAME: &str = "12 console";
/// Open pages.
const PAGES: usize = 10;

/// Run the scenario.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let (mut out, mut fig) = (Outcome::default(), Figures::new(ctx.tap_offloads));
    let window = if ctx.reps > 1 { 20.0 } else { 10.0 };
    let topo = BenchTopo::generated(10_000_000_000, 4, 2);
    let mut extra = ctx.netd_args.clone();
    extra.extend(["--http".to_string(), "127.0.0.1:0".to_string()]);
    let netd = NetdBed::up(&topo, &format!("{}c", ctx.prefix), &ctx.tmp, &extra)?;
    let (addr, token) = http_of(&netd)?;
    let cookie = login(&addr, &token)?;
    let pid = netd.pid();
    for rep in 0..ctx.reps {
        check_stop()?;
        let idle = cpu_share(ctx, pid, window)?;
        let pages = Pages::open(&addr, &cookie, PAGES)?;
        sleep(Duration::from_secs(1))?;
        let before = pages.events();
        let open = cpu_share(ctx, pid, window)?;
        let per_page_per_s = (pages.events() - before) as f64 / PAGES as f64 / window;
        drop(pages);
        let cost = (open - idle) * 100.0;
        eprintln!(
            "  {NAME} rep {rep}: netd {:.2}% of a core idle, {:.2}% with {PAGES} pages ({per_page_per_s:.1} snapshots/s each): {cost:.2}%",
            idle * 100.0,
            open * 100.0
        );
        fig.add("netd CPU, no page open", Side::Netd, idle * 100.0);
        fig.add(
            &format!("netd CPU, {PAGES} pages open"),
            Side::Netd,
            open * 100.0,
        );
        fig.add(&format!("cost of {PAGES} pages"), Side::Netd, cost);
        fig.add("snapshots per page per second", Side::Netd, per_page_per_s);
        out.runs.push(json!({
            "scenario": NAME, "rep": rep, "idle_core_share": idle, "open_core_share": open,
            "pages": PAGES, "snapshots_per_page_per_s": per_page_per_s,
        }));
    }
    out.rows
        .push(fig.row(NAME, "netd CPU, no page open", "% of a core", None));
    out.rows.push(fig.row(
        NAME,
        &format!("netd CPU, {PAGES} pages open"),
        "% of a core",
        None,
    ));
    out.rows.push(fig.row(
        NAME,
        &format!("cost of {PAGES} pages"),
        "% of a core",
        Some(Target::AtMost(1.0)),
    ));
    out.rows.push(fig.row(
        NAME,
        "snapshots per page per second",
        "1/s",
        Some(Target::AtLeast(4.0)),
    ));
    Ok(out)
}

/// netd's share of one core over `secs` seconds.
fn cpu_share(ctx: &Ctx, pid: Option<u32>, secs: f64) -> Result<f64> {
    let start = Cpu::read(pid);
    sleep(Duration::from_secs_f64(secs))?;
    let (netd, _) = start.seconds_until(&Cpu::read(pid), ctx.ticks);
    Ok(netd / secs)
}

/// The HTTP address and admin token from netd's "netd is up" log line.
fn http_of(netd: &NetdBed) -> Result<(String, String)> {
    let log = netd.log();
    let line = log
        .lines()
        .find(|l| l.contains("netd is up"))
        .context("no \"netd is up\" line")?;
    let value: serde_json::Value = serde_json::from_str(line)?;
    let fields = &value["fields"];
    let addr = fields["http"].as_str().context("no http address logged")?;
    let file = fields["http_token"]
        .as_str()
        .context("no token file logged")?;
    let token = std::fs::read_to_string(file)?.trim().to_string();
    Ok((addr.to_string(), token))
}

/// One HTTP/1.1 request on a fresh connection; return the response's head and the stream.
fn request(addr: &str, head: &str, body: &str) -> Result<(String, BufReader<TcpStream>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{head}\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut response = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        response.push_str(&line);
    }
    Ok((response, reader))
}

/// Sign in as the page does; return the session cookie.
fn login(addr: &str, token: &str) -> Result<String> {
    let body = json!({ "token": token }).to_string();
    let (head, _) = request(
        addr,
        "POST /api/login HTTP/1.1\r\nContent-Type: application/json",
        &body,
    )?;
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .with_context(|| format!("no cookie in {head}"))?;
    Ok(cookie.to_string())
}

/// Open event streams, each read to the end by its own thread.
struct Pages {
    stop: Arc<AtomicBool>,
    events: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pages {
    fn open(addr: &str, cookie: &str, n: usize) -> Result<Pages> {
        let (stop, events) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut threads = Vec::new();
        for _ in 0..n {
            let (head, mut reader) = request(
                addr,
                &format!("GET /api/events HTTP/1.1\r\nCookie: {cookie}"),
                "",
            )?;
            if !head.starts_with("HTTP/1.1 200") {
                bail!("event stream refused: {head}");
            }
            let (stop, events) = (stop.clone(), events.clone());
            threads.push(std::thread::spawn(move || {
                let mut line = String::new();
                while !stop.load(Ordering::Relaxed) {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line.starts_with("event: snapshot") => {
                            events.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                    }
                }
            }));
        }
        Ok(Pages {
            stop,
            events,
            threads,
        })
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
