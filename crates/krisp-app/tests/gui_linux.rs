//! The app a person sees, tested from the outside: `krisp` with its window under Xvfb and its
//! tray icon on a private D-Bus session bus, against a real headless PulseAudio whose fake
//! microphone plays noisy speech.
//!
//! Screenshots (off, on with meters moving, device gone) are taken with ImageMagick's
//! `import` and checked by the colours the window uses for those states; they are kept in
//! `$KRISP_SCREENSHOTS` (default: `<target>/tmp/screenshots`) for a person to look at. The
//! tray is driven the way a panel drives it: StatusNotifierItem `Activate` (left click) and
//! com.canonical.dbusmenu `Event` (menu clicks), with `dbus-send`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::audio_server::{AudioServer, Kind, have, required};
use common::{ChildGuard, Krisp, Player, record_pair, speech_and_noisy};
use krisp_testkit::write_f32_wav;

/// Colours of `krisp_app::ui::colors` (the binary's; repeated here as the test's contract).
const ON: [u8; 3] = [0x2f, 0x9e, 0x44];
const OFF: [u8; 3] = [0x86, 0x8e, 0x96];
const PROBLEM: [u8; 3] = [0xe0, 0x31, 0x31];
const METER: [u8; 3] = [0x1c, 0x7e, 0xd6];
const WARNING: [u8; 3] = [0xf0, 0x8c, 0x00];

fn tools_present() -> bool {
    let missing: Vec<_> = [
        "Xvfb",
        "xdotool",
        "import",
        "dbus-daemon",
        "dbus-send",
        "pulseaudio",
    ]
    .into_iter()
    .filter(|b| !have(b))
    .collect();
    if missing.is_empty() {
        return true;
    }
    if required() {
        panic!("KRISP_REQUIRE_SERVERS=1 but {missing:?} are not installed");
    }
    eprintln!("\n!!!!! SKIPPING the window tests: {missing:?} not installed !!!!!\n");
    false
}

/// A private X server.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Xvfb {
        // Tests run in parallel threads of one process: each takes its own display number.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..50 {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let num = 140 + (std::process::id() as usize * 7 + n) % 400;
            if Path::new(&format!("/tmp/.X{num}-lock")).exists() {
                continue;
            }
            let mut child = Command::new("Xvfb")
                .args([
                    &format!(":{num}"),
                    "-screen",
                    "0",
                    "1024x768x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let sock = format!("/tmp/.X11-unix/X{num}");
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if Path::new(&sock).exists() {
                    // Ours, not another server's that happened to be there.
                    std::thread::sleep(Duration::from_millis(200));
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    return Xvfb {
                        child,
                        display: format!(":{num}"),
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start Xvfb");
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private session bus with no activatable services (no Secret Service: the test's license
/// is in the private file), for the tray's StatusNotifierItem.
struct Bus {
    child: Child,
    address: String,
}

impl Bus {
    fn start(dir: &Path) -> Bus {
        let sock = dir.join("gui-bus");
        let config = dir.join("gui-bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                sock.display()
            ),
        )
        .unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "dbus-daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Bus {
            child,
            address: format!("unix:path={}", sock.display()),
        }
    }

    fn send(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("dbus-send")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address)
            .args(["--session", "--print-reply", "--reply-timeout=5000"])
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The bus name of Krisp's StatusNotifierItem, once it is registered.
    fn tray_name(&self, timeout: Duration) -> Option<String> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Ok(names) = self.send(&[
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ListNames",
            ]) && let Some(n) = names
                .split('"')
                .find(|n| n.starts_with("org.kde.StatusNotifierItem-"))
            {
                return Some(n.to_owned());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An RGB screenshot.
struct Shot {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Shot {
    fn load(path: &Path) -> Shot {
        let mut d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        d.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut r = d.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        let n = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("unexpected screenshot colour type {other:?}"),
        };
        let rgb = buf[..info.buffer_size()]
            .chunks(n)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        Shot {
            w: info.width as usize,
            h: info.height as usize,
            rgb,
        }
    }

    /// Pixels within ±6 per channel of `c`.
    fn count(&self, c: [u8; 3]) -> usize {
        self.rgb
            .chunks(3)
            .filter(|p| (0..3).all(|i| p[i].abs_diff(c[i]) <= 6))
            .count()
    }

    /// Rows holding at least `min` pixels of colour `c`.
    fn rows_with(&self, c: [u8; 3], min: usize) -> Vec<usize> {
        (0..self.h)
            .filter(|&y| {
                self.rgb[y * self.w * 3..(y + 1) * self.w * 3]
                    .chunks(3)
                    .filter(|p| (0..3).all(|i| p[i].abs_diff(c[i]) <= 6))
                    .count()
                    >= min
            })
            .collect()
    }

    /// Width in pixels of colour `c` on row `y` (a meter's fill).
    fn width_on_row(&self, c: [u8; 3], y: usize) -> usize {
        self.rgb[y * self.w * 3..(y + 1) * self.w * 3]
            .chunks(3)
            .filter(|p| (0..3).all(|i| p[i].abs_diff(c[i]) <= 6))
            .count()
    }
}

fn screenshots_dir() -> PathBuf {
    let d = std::env::var_os("KRISP_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn window_id(x: &Xvfb, timeout: Duration) -> Option<String> {
    let t = Instant::now();
    loop {
        let out = Command::new("xdotool")
            .env("DISPLAY", &x.display)
            .args(["search", "--onlyvisible", "--name", "^Krisp$"])
            .output()
            .unwrap();
        if let Some(id) = String::from_utf8_lossy(&out.stdout).lines().next()
            && !id.trim().is_empty()
        {
            return Some(id.trim().to_owned());
        }
        if t.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn screenshot(x: &Xvfb, id: &str, name: &str) -> Shot {
    let path = screenshots_dir().join(name);
    let st = Command::new("import")
        .env("DISPLAY", &x.display)
        .args(["-window", id])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success(), "import failed for {name}");
    Shot::load(&path)
}

/// Waits until `pred` holds for the engine's status.
fn wait_status(
    server: &AudioServer,
    krisp: &Krisp,
    timeout: Duration,
    mut pred: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let st = krisp.status_json(server);
        if pred(&st) || t.elapsed() > timeout {
            return st;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Gui {
    x: Xvfb,
    bus: Bus,
}

impl Gui {
    fn start(server: &AudioServer) -> Gui {
        Gui {
            x: Xvfb::start(),
            bus: Bus::start(server.runtime_dir()),
        }
    }

    fn launch(&self, server: &AudioServer, args: &[&str]) -> Krisp {
        Krisp::spawn(
            server,
            args,
            true,
            &[
                ("DISPLAY", self.x.display.as_ref()),
                ("DBUS_SESSION_BUS_ADDRESS", self.bus.address.as_ref()),
                (
                    "XDG_CONFIG_HOME",
                    server.runtime_dir().join("xdg").as_os_str(),
                ),
                ("LIBGL_ALWAYS_SOFTWARE", "1".as_ref()),
            ],
        )
    }

    /// The tray menu's item ids by label (com.canonical.dbusmenu GetLayout).
    fn menu(&self, tray: &str) -> Vec<(i32, String)> {
        let layout = self
            .bus
            .send(&[
                &format!("--dest={tray}"),
                "/MenuBar",
                "com.canonical.dbusmenu.GetLayout",
                "int32:0",
                "int32:-1",
                "array:string:",
            ])
            .unwrap();
        // dbus-send prints each item as `struct { int32 ID  array [ ... "label" variant string "Text" ...`.
        let mut items = vec![];
        let mut id = None;
        let mut lines = layout.lines().peekable();
        while let Some(l) = lines.next() {
            let l = l.trim();
            if let Some(n) = l.strip_prefix("int32 ") {
                id = n.trim().parse().ok();
            }
            if l == "string \"label\""
                && let Some(next) = lines.peek()
                && let Some(text) = next.trim().strip_prefix("variant")
                && let Some(id) = id
            {
                let text = text
                    .trim()
                    .trim_start_matches("string")
                    .trim()
                    .trim_matches('"');
                items.push((id, text.to_owned()));
            }
        }
        items
    }

    fn click_menu(&self, tray: &str, id: i32) {
        self.bus
            .send(&[
                &format!("--dest={tray}"),
                "/MenuBar",
                "com.canonical.dbusmenu.Event",
                &format!("int32:{id}"),
                "string:clicked",
                "variant:int32:0",
                "uint32:0",
            ])
            .unwrap();
    }

    fn left_click(&self, tray: &str) {
        self.bus
            .send(&[
                &format!("--dest={tray}"),
                "/StatusNotifierItem",
                "org.kde.StatusNotifierItem.Activate",
                "int32:0",
                "int32:0",
            ])
            .unwrap();
    }
}

/// The window's processes: children of `pid` named `krisp`, with their state letter (`Z`: a
/// zombie nobody reaped).
fn window_children(pid: u32) -> Vec<(u32, char)> {
    let mut found = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == pid && comm == "krisp" {
            found.push((child, state));
        }
    }
    found
}

/// Resident memory of `pid` in MB (VmRSS).
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb / 1024.0
}

/// Waits until `pid` has no window process left, not even a zombie.
fn wait_no_window_child(pid: u32, timeout: Duration) -> Vec<(u32, char)> {
    let t = Instant::now();
    loop {
        let left = window_children(pid);
        if left.is_empty() || t.elapsed() > timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn noisy_player(server: &AudioServer, secs: f32) -> Player {
    let (_, noisy) = speech_and_noisy(secs, 5.0);
    let wav = server.runtime_dir().join("noisy.wav");
    write_f32_wav(&wav, 48_000, &noisy);
    Player::start(server, &wav)
}

#[test]
fn the_window_and_the_tray_drive_the_microphone() {
    if !tools_present() {
        return;
    }
    let Some(server) = AudioServer::start(Kind::PulseAudio, 48_000, 1) else {
        return;
    };
    let _player = noisy_player(&server, 60.0);
    let gui = Gui::start(&server);
    let mut krisp = gui.launch(&server, &["run", "--input", "fake_mic"]);
    let log =
        || std::fs::read_to_string(server.runtime_dir().join("krisp.log")).unwrap_or_default();

    let id = window_id(&gui.x, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no Krisp window appeared; log:\n{}", log()));
    // Audio flowing, not only the stream open: the fake mic's first samples can take ~2 s
    // after that on these VMs, and the meters below need them.
    let st = wait_status(&server, &krisp, Duration::from_secs(20), |s| {
        s["stats"]["input_running"] == true
            && s["denoising"] == true
            && s["stats"]["captured_frames"].as_u64() > Some(0)
    });
    assert_eq!(st["denoising"], true, "{st}\n{}", log());
    assert!(
        server.source_count("krisp_mic") == 1,
        "Krisp Microphone exists once"
    );

    // Off: the switch is grey, nothing green.
    krisp.ctl(&server, "off");
    std::thread::sleep(Duration::from_millis(400));
    let off = screenshot(&gui.x, &id, "window-off.png");
    eprintln!(
        "off: {}x{}, green {}, grey {}, red {}",
        off.w,
        off.h,
        off.count(ON),
        off.count(OFF),
        off.count(PROBLEM)
    );
    assert!(off.count(OFF) > 5_000, "the OFF switch is not drawn");
    assert!(off.count(ON) < 50, "something is green while off");
    assert_eq!(off.count(PROBLEM), 0, "a problem banner while all is well");

    // On, with a call app listening (as Zoom would): the switch is green and the meters move.
    let _listener = ChildGuard(
        server
            .cmd("parecord")
            .args(["-d", "krisp_mic", "--raw"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_status(&server, &krisp, Duration::from_secs(5), |s| {
        s["stats"]["listeners"] == true
    });
    krisp.ctl(&server, "on");
    std::thread::sleep(Duration::from_millis(400));
    let on = screenshot(&gui.x, &id, "window-on.png");
    let meter_rows = on.rows_with(METER, 10);
    assert!(on.count(ON) > 5_000, "the ON switch is not drawn");
    assert!(
        meter_rows.len() >= 20,
        "the two level meters do not both show a level ({} rows); status {}",
        meter_rows.len(),
        krisp.status_json(&server)
    );
    let widths = |s: &Shot| -> Vec<usize> {
        meter_rows
            .iter()
            .map(|&y| s.width_on_row(METER, y))
            .collect()
    };
    let first = widths(&on);
    let mut moved = false;
    for k in 0..10 {
        std::thread::sleep(Duration::from_millis(150));
        let again = screenshot(&gui.x, &id, &format!("window-on-{k}.png"));
        if widths(&again) != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "the meters did not move in 1.5 s of speech");

    // The tray: its menu, and a left click toggles noise removal, click-free.
    let tray = gui
        .bus
        .tray_name(Duration::from_secs(10))
        .expect("no StatusNotifierItem on the session bus");
    let menu = gui.menu(&tray);
    let labels: Vec<&str> = menu.iter().map(|(_, l)| l.as_str()).collect();
    for want in [
        "Noise removal",
        "Microphone",
        "Open Krisp",
        "Start at login",
        "Quit",
    ] {
        assert!(
            labels.contains(&want),
            "tray menu lacks {want:?}: {labels:?}"
        );
    }
    assert!(
        labels.contains(&"FakeMic"),
        "the Microphone submenu lists no input: {labels:?}"
    );
    let (mic, out, _) = std::thread::scope(|sc| {
        let h = sc.spawn(|| record_pair(&server, "fake_mic", "krisp_mic", 6.0));
        std::thread::sleep(Duration::from_secs(3));
        let t = Instant::now();
        gui.left_click(&tray);
        let st = wait_status(&server, &krisp, Duration::from_secs(5), |s| {
            s["enabled"] == false
        });
        eprintln!(
            "tray click → engine off in {:.0} ms (incl. one `krisp status` round trip)",
            t.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(st["enabled"], false, "the tray's left click did not toggle");
        h.join().unwrap()
    });
    let step = |s: &[f32]| {
        s.windows(2)
            .filter(|w| w[0] != 0.0 && w[1] != 0.0)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0f32, f32::max)
    };
    let around = &out[48_000 * 2..48_000 * 5];
    assert!(
        step(around) <= step(&mic[48_000..48_000 * 5]) * 1.1,
        "click at the tray toggle: step {} vs the signal's largest {}",
        step(around),
        step(&mic[48_000..48_000 * 5])
    );
    // The menu's "Noise removal" item toggles it back.
    let toggle = menu.iter().find(|(_, l)| l == "Noise removal").unwrap().0;
    gui.click_menu(&tray, toggle);
    let st = wait_status(&server, &krisp, Duration::from_secs(5), |s| {
        s["enabled"] == true
    });
    assert_eq!(st["enabled"], true, "the tray menu did not toggle");

    // The microphone goes away: a red banner says so; it comes back: the banner goes.
    let module = server
        .pactl(&["list", "short", "modules"])
        .unwrap()
        .lines()
        .find(|l| l.contains("source_name=fake_mic"))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .expect("the fake mic's module");
    let args = server
        .pactl(&["list", "short", "modules"])
        .unwrap()
        .lines()
        .find(|l| l.contains("source_name=fake_mic"))
        .map(|l| l.split('\t').skip(1).collect::<Vec<_>>())
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    server.pactl(&["unload-module", &module]).unwrap();
    let st = wait_status(&server, &krisp, Duration::from_secs(10), |s| {
        s["status"]
            .as_str()
            .is_some_and(|t| t.contains("gone") || t.contains("no microphone"))
    });
    std::thread::sleep(Duration::from_millis(400));
    let gone = screenshot(&gui.x, &id, "window-device-gone.png");
    eprintln!(
        "device gone: {} red pixels; status {}",
        gone.count(PROBLEM),
        st["status"]
    );
    assert!(
        gone.count(PROBLEM) > 3_000,
        "no problem banner with the microphone gone ({})",
        st["status"]
    );
    let mut load = vec!["load-module"];
    load.extend(args.iter().map(String::as_str));
    server.pactl(&load).unwrap();
    let st = wait_status(&server, &krisp, Duration::from_secs(15), |s| {
        s["stats"]["input_running"] == true
            && s["status"]
                .as_str()
                .is_some_and(|t| t.starts_with("running"))
    });
    assert!(
        st["status"].as_str().unwrap().starts_with("running"),
        "{st}"
    );
    std::thread::sleep(Duration::from_millis(400));
    let back = screenshot(&gui.x, &id, "window-device-back.png");
    assert_eq!(
        back.count(PROBLEM),
        0,
        "the banner stayed after the mic came back"
    );

    // "Start at login" from the tray writes the user's autostart entry; again removes it.
    let entry = server.runtime_dir().join("xdg/autostart/krisp.desktop");
    let autostart = |gui: &Gui| {
        let id = gui
            .menu(&tray)
            .into_iter()
            .find(|(_, l)| l == "Start at login")
            .unwrap()
            .0;
        gui.click_menu(&tray, id);
    };
    autostart(&gui);
    let t = Instant::now();
    while !entry.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&entry).expect("no autostart entry was written");
    assert!(text.contains("run --minimized"), "{text}");
    autostart(&gui);
    let t = Instant::now();
    while entry.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !entry.exists(),
        "switching start at login off left the entry"
    );

    // Microphone ▸ System default: the choice reaches the engine and is remembered.
    let default = gui
        .menu(&tray)
        .into_iter()
        .find(|(_, l)| l == "System default")
        .unwrap()
        .0;
    gui.click_menu(&tray, default);
    let st = wait_status(&server, &krisp, Duration::from_secs(5), |s| {
        s["input"].is_null()
    });
    assert!(
        st["input"].is_null(),
        "the tray's microphone choice did not apply: {st}"
    );
    let settings = std::fs::read_to_string(krisp.config.join("settings.toml")).unwrap_or_default();
    assert!(
        !settings.contains("fake_mic"),
        "the choice was not remembered: {settings}"
    );

    // The window is a process of its own, one, started by the app.
    let windows = window_children(krisp.child.id());
    assert_eq!(windows.len(), 1, "one window process: {windows:?}");
    let window_pid = windows[0].0;

    // Quit from the tray removes Krisp Microphone and exits cleanly, and ends the window.
    // (The Microphone submenu was rebuilt meanwhile, so the menu's ids are read again.)
    let quit = gui
        .menu(&tray)
        .into_iter()
        .find(|(_, l)| l == "Quit")
        .unwrap()
        .0;
    gui.click_menu(&tray, quit);
    let t = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = krisp.child.try_wait() {
            break Some(s);
        }
        if t.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "Quit did not end krisp cleanly: {status:?}\n{}",
        log()
    );
    assert_eq!(
        server.source_count("krisp_mic"),
        0,
        "Krisp Microphone left behind"
    );
    assert!(
        !Path::new(&format!("/proc/{window_pid}")).exists(),
        "the window's process {window_pid} outlived Quit"
    );
    assert!(
        window_id(&gui.x, Duration::ZERO).is_none(),
        "a window is left"
    );
}

#[test]
fn a_second_launch_shows_the_window_of_the_first() {
    if !tools_present() {
        return;
    }
    let Some(server) = AudioServer::start(Kind::PulseAudio, 48_000, 1) else {
        return;
    };
    let gui = Gui::start(&server);
    let mut krisp = gui.launch(&server, &["run", "--minimized", "--input", "fake_mic"]);
    let st = wait_status(&server, &krisp, Duration::from_secs(30), |s| {
        s["stats"]["input_running"] == true
    });
    assert_eq!(st["stats"]["input_running"], true, "{st}");
    // eframe maps the window for its first frame; `--minimized` unmaps it right after.
    let t = Instant::now();
    while window_id(&gui.x, Duration::ZERO).is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "--minimized left the window shown"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        window_id(&gui.x, Duration::ZERO).is_none(),
        "the hidden window came back by itself"
    );
    assert!(
        gui.bus.tray_name(Duration::from_secs(10)).is_some(),
        "no tray icon"
    );

    let tray_only = rss_mb(krisp.child.id());
    assert!(
        window_children(krisp.child.id()).is_empty(),
        "--minimized started a window process"
    );

    // What a user's second click on the launcher does.
    let mut second = gui.launch(&server, &["run"]);
    let t = Instant::now();
    let out = loop {
        if let Some(s) = second.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the second krisp kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(out.success(), "the second launch failed");
    let id =
        window_id(&gui.x, Duration::from_secs(10)).expect("the first krisp's window did not show");
    assert_eq!(server.source_count("krisp_mic"), 1, "two Krisp Microphones");
    let app = krisp.child.id();
    let windows = window_children(app);
    assert_eq!(windows.len(), 1, "one window process: {windows:?}");

    // Launched once more while the window is open: the same window comes forward, no second.
    let mut third = gui.launch(&server, &["run"]);
    let t = Instant::now();
    while third.child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the third krisp kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // The same process (by pid: its state letter changes as it draws and sleeps).
    let pids = |w: &[(u32, char)]| w.iter().map(|c| c.0).collect::<Vec<_>>();
    assert_eq!(
        pids(&window_children(app)),
        pids(&windows),
        "a launch with the window open started another window"
    );

    // The window's close button (what a window manager sends) hides it to the tray: Krisp
    // and its microphone keep running.
    let st = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/close-window.py"
        ))
        .arg(&id)
        .env("DISPLAY", &gui.x.display)
        .status()
        .unwrap();
    assert!(st.success(), "close-window.py failed");
    let t = Instant::now();
    while window_id(&gui.x, Duration::ZERO).is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "closing did not hide the window"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        krisp.child.try_wait().unwrap().is_none(),
        "closing the window quit krisp"
    );
    // The window's process ended and was reaped, and the app went back to its tray-only
    // size: the GL driver's memory went with the window.
    let left = wait_no_window_child(app, Duration::from_secs(5));
    assert!(left.is_empty(), "the window's process is left: {left:?}");
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mb(app);
    eprintln!(
        "app RSS: {tray_only:.1} MB tray only, {rss:.1} MB after the window was opened and closed"
    );
    assert!(
        rss <= 40.0,
        "the app holds {rss:.1} MB after its window closed (target ≤ 40 MB)"
    );
    assert!(
        rss <= tray_only + 10.0,
        "the window left {:.1} MB behind in the app ({tray_only:.1} → {rss:.1} MB)",
        rss - tray_only
    );
    assert_eq!(
        server.source_count("krisp_mic"),
        1,
        "closing the window removed the mic"
    );
    assert!(krisp.interrupt(), "Ctrl-C did not end krisp cleanly");
    assert_eq!(server.source_count("krisp_mic"), 0);
}

#[test]
fn the_window_process_without_a_running_app_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::krisp_bin())
        .args(["window", "--socket"])
        .arg(dir.path().join("none.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "krisp window without an app succeeded"
    );
    assert!(err.contains("no krisp answers"), "{err}");
    // Internal: not offered in the help.
    let help = Command::new(common::krisp_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        !help.lines().any(|l| l.trim_start().starts_with("window")),
        "the internal command shows in --help:\n{help}"
    );
}

fn xdotool(x: &Xvfb, args: &[&str]) {
    let st = Command::new("xdotool")
        .env("DISPLAY", &x.display)
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "xdotool {args:?} failed");
}

#[test]
fn signing_in_from_the_window_turns_noise_removal_on() {
    if !tools_present() {
        return;
    }
    let Some(server) = AudioServer::start(Kind::PulseAudio, 48_000, 1) else {
        return;
    };
    let mut backend = common::backend::Backend::start();
    let gui = Gui::start(&server);
    let krisp = Krisp::spawn(
        &server,
        &["run", "--input", "fake_mic"],
        false,
        &[
            ("DISPLAY", gui.x.display.as_ref()),
            ("DBUS_SESSION_BUS_ADDRESS", gui.bus.address.as_ref()),
            (
                "XDG_CONFIG_HOME",
                server.runtime_dir().join("xdg").as_os_str(),
            ),
            ("LIBGL_ALWAYS_SOFTWARE", "1".as_ref()),
            ("KRISP_SERVER", backend.url.as_ref()),
            ("KRISP_DEV_TRUSTED_KEYS", backend.keys.as_ref()),
        ],
    );
    let log =
        || std::fs::read_to_string(server.runtime_dir().join("krisp.log")).unwrap_or_default();
    let id = window_id(&gui.x, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no Krisp window appeared; log:\n{}", log()));
    let st = wait_status(&server, &krisp, Duration::from_secs(20), |s| {
        s["stats"]["input_running"] == true
    });
    assert_eq!(st["denoising"], false, "denoising without a license: {st}");
    std::thread::sleep(Duration::from_millis(500));
    let before = screenshot(&gui.x, &id, "window-not-signed-in.png");
    assert!(
        before.count(WARNING) > 3_000,
        "no 'sign in' banner while unlicensed"
    );

    // The cursor waits in the e-mail field: type the address, Enter; then the mailed code.
    xdotool(&gui.x, &["windowfocus", "--sync", &id]);
    xdotool(&gui.x, &["type", "--delay", "20", "ada@example.com"]);
    xdotool(&gui.x, &["key", "Return"]);
    let t = Instant::now();
    let code = loop {
        if let Some(c) = backend.code_for("ada@example.com") {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the window sent no code request; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    screenshot(&gui.x, &id, "window-enter-code.png");
    xdotool(&gui.x, &["type", "--delay", "20", &code]);
    xdotool(&gui.x, &["key", "Return"]);
    let st = wait_status(&server, &krisp, Duration::from_secs(30), |s| {
        s["denoising"] == true
    });
    assert_eq!(
        st["denoising"],
        true,
        "signing in from the window did not turn noise removal on: {st}\n{}",
        log()
    );
    assert!(
        st["extra"][0].as_str().unwrap_or("").contains("active"),
        "{st}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = screenshot(&gui.x, &id, "window-signed-in.png");
    assert_eq!(after.count(WARNING), 0, "the 'sign in' banner stayed");
    drop(krisp);
    backend.stop();
}
