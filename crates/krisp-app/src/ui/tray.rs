//! The tray icon: shows on / off / problem; left click toggles noise removal; the menu has
//! Noise removal, Microphone ▸, Open Krisp, Start at login and Quit.
//!
//! On Linux it is a StatusNotifierItem on the session bus (tray-icon's `ksni` backend, its
//! own thread): desktop panels (KDE, GNOME with the AppIndicator extension, XFCE, waybar)
//! show it. Clicks arrive on that thread; the noise-removal toggle is applied there directly
//! (one atomic store: the engine crossfades), everything else goes to the window's thread.

use std::sync::mpsc::Sender;

use anyhow::{Context, Result};
use krisp_engine::{Control, InputInfo};
use tray_icon::menu::{
    CheckMenuItem, IsMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem, Submenu,
};
use tray_icon::{MouseButton, MouseButtonState, TrayIcon, TrayIconBuilder, TrayIconEvent};

use super::icons::{self, Look};

/// What the tray asks of the window's thread.
#[derive(Debug, Clone, PartialEq)]
pub enum TrayAction {
    Open,
    Quit,
    StartAtLogin(bool),
    Input(Option<String>),
}

const ID_TOGGLE: &str = "toggle";
const ID_OPEN: &str = "open";
const ID_AUTOSTART: &str = "autostart";
const ID_QUIT: &str = "quit";
const MIC_PREFIX: &str = "mic:";
const MIC_DEFAULT: &str = "mic-default";

pub struct Tray {
    icon: TrayIcon,
    toggle: CheckMenuItem,
    autostart: CheckMenuItem,
    mics: Submenu,
    mic_items: Vec<(CheckMenuItem, Option<String>)>,
    mic_names: Vec<String>,
    look: Option<Look>,
}

fn icon(look: Look) -> Result<tray_icon::Icon> {
    let i = icons::tray(look);
    tray_icon::Icon::from_rgba(i.pixels, i.width, i.height).context("tray icon picture")
}

impl Tray {
    /// Creates the icon. `wake` is called after every event so the window's thread looks.
    pub fn new(
        control: Control,
        actions: Sender<TrayAction>,
        wake: impl Fn() + Send + Sync + Clone + 'static,
    ) -> Result<Tray> {
        let toggle = CheckMenuItem::with_id(ID_TOGGLE, "Noise removal", true, true, None);
        let mics = Submenu::new("Microphone", true);
        let open = MenuItem::with_id(ID_OPEN, "Open Krisp", true, None);
        let autostart = CheckMenuItem::with_id(ID_AUTOSTART, "Start at login", true, false, None);
        let quit = MenuItem::with_id(ID_QUIT, "Quit", true, None);
        let menu = Menu::new();
        let sep = PredefinedMenuItem::separator();
        let items: [&dyn IsMenuItem; 6] = [&toggle, &mics, &open, &autostart, &sep, &quit];
        for item in items {
            menu.append(item).context("building the tray menu")?;
        }
        let icon = TrayIconBuilder::new()
            .with_id("krisp")
            .with_title("Krisp")
            .with_tooltip("Krisp: noise removal")
            .with_icon(icon(Look::Off)?)
            .with_menu(Box::new(menu))
            .with_menu_on_left_click(false)
            .build()
            .context("creating the tray icon")?;

        let (c, w) = (control.clone(), wake.clone());
        TrayIconEvent::set_event_handler(Some(move |e: TrayIconEvent| {
            if let TrayIconEvent::Click {
                button: MouseButton::Left,
                button_state: MouseButtonState::Up,
                ..
            } = e
            {
                c.set_enabled(!c.enabled());
            }
            w();
        }));
        MenuEvent::set_event_handler(Some(move |e: MenuEvent| {
            let id = e.id.as_ref();
            let action = match id {
                ID_TOGGLE => {
                    control.set_enabled(!control.enabled());
                    None
                }
                ID_OPEN => Some(TrayAction::Open),
                ID_QUIT => Some(TrayAction::Quit),
                ID_AUTOSTART => Some(TrayAction::StartAtLogin(!crate::autostart::enabled())),
                MIC_DEFAULT => Some(TrayAction::Input(None)),
                _ => id
                    .strip_prefix(MIC_PREFIX)
                    .map(|n| TrayAction::Input(Some(n.to_owned()))),
            };
            if let Some(a) = action {
                let _ = actions.send(a);
            }
            wake();
        }));
        Ok(Tray {
            icon,
            toggle,
            autostart,
            mics,
            mic_items: Vec::new(),
            mic_names: vec!["\u{0}".into()], // forces the first rebuild
            look: None,
        })
    }

    /// Brings the icon and the menu's check marks in line with the app's state.
    pub fn sync(
        &mut self,
        look: Look,
        tooltip: &str,
        enabled: bool,
        autostart: bool,
        inputs: &[InputInfo],
        chosen: Option<&str>,
    ) {
        if self.look != Some(look) {
            if let Ok(i) = icon(look) {
                let _ = self.icon.set_icon(Some(i));
            }
            let _ = self.icon.set_tooltip(Some(tooltip));
            self.look = Some(look);
        }
        if self.toggle.is_checked() != enabled {
            self.toggle.set_checked(enabled);
        }
        if self.autostart.is_checked() != autostart {
            self.autostart.set_checked(autostart);
        }
        let names: Vec<String> = inputs
            .iter()
            .filter(|i| !i.is_own && !i.is_monitor)
            .map(|i| i.name.clone())
            .collect();
        if names != self.mic_names {
            for (item, _) in self.mic_items.drain(..) {
                let _ = self.mics.remove(&item);
            }
            let default = CheckMenuItem::with_id(MIC_DEFAULT, "System default", true, false, None);
            let _ = self.mics.append(&default);
            self.mic_items.push((default, None));
            for i in inputs.iter().filter(|i| !i.is_own && !i.is_monitor) {
                let item = CheckMenuItem::with_id(
                    format!("{MIC_PREFIX}{}", i.name),
                    &i.description,
                    true,
                    false,
                    None,
                );
                let _ = self.mics.append(&item);
                self.mic_items.push((item, Some(i.name.clone())));
            }
            self.mic_names = names;
        }
        for (item, name) in &self.mic_items {
            let want = name.as_deref() == chosen;
            if item.is_checked() != want {
                item.set_checked(want);
            }
        }
    }
}

impl Drop for Tray {
    fn drop(&mut self) {
        TrayIconEvent::set_event_handler(None::<fn(TrayIconEvent)>);
        MenuEvent::set_event_handler(None::<fn(MenuEvent)>);
    }
}
