//! The frame of every page after login: sidebar navigation, header with who is logged in and
//! the live-stream status, and the page itself.

use leptos::prelude::*;

use crate::pages::login::Logo;
use crate::router::{self, Route, Tab};
use crate::session;
use crate::stats::{self, Status};
use crate::ui::{Empty, Link};

#[component]
fn NavItem(
    #[prop(into)] href: String,
    label: &'static str,
    active: Signal<bool>,
    /// The scope this session lacks for the page, if any.
    #[prop(default = None)]
    locked: Option<&'static str>,
) -> impl IntoView {
    let title = locked.map(|s| format!("Needs the {s} scope"));
    view! {
        <Link href=href class="nav-item">
            <span
                class:active=move || active.get()
                class:locked=locked.is_some()
                class="nav-label"
                data-nav=label
                title=title
            >
                {label}
            </span>
        </Link>
    }
}

#[component]
pub fn Shell() -> impl IntoView {
    let route = Memo::new(move |_| router::route());
    let who = Memo::new(move |_| session::get());
    let is_admin = move || who.get().is_some_and(|s| s.is_admin());
    // The tenant whose pages the sidebar lists: the one in the URL, or an API key's own.
    let current_tenant = Memo::new(move |_| match route.get() {
        Route::Tenant(t, _) => Some(t),
        _ => who.get().and_then(|s| s.tenant),
    });

    let sidebar_tenant = move || {
        current_tenant.get().map(|t| {
            let items = Tab::ALL
                .into_iter()
                .map(|tab| {
                    let t2 = t.clone();
                    let active = Signal::derive(move || route.get() == Route::Tenant(t2.clone(), tab));
                    let locked = tab.scope().filter(|s| who.get_untracked().is_some_and(|w| !w.can(s)));
                    view! {
                        <NavItem href=router::tenant_path(&t, tab) label=tab.label() active=active locked=locked />
                    }
                })
                .collect::<Vec<_>>();
            view! {
                <div class="nav-section">
                    <div class="nav-heading" title=t.clone()>
                        "Tenant · "
                        <span class="mono">{t.clone()}</span>
                    </div>
                    {items}
                </div>
            }
        })
    };

    let status = move || {
        let (class, text) = match stats::live().with(|l| l.status.clone()) {
            Status::Live => ("live-dot live", "Live".to_owned()),
            Status::Connecting => ("live-dot", "Connecting…".to_owned()),
            Status::Retrying(m) => ("live-dot warn", m),
            Status::Unavailable(_) | Status::Off => ("live-dot off", "No live stats".to_owned()),
        };
        let attr = text.clone();
        view! {
            <span class="live-status" data-live=attr>
                <span class=class></span>
                {text}
            </span>
        }
    };

    let who_view = move || {
        who.get().map(|s| {
            if s.is_admin() {
                let until = s.expires_at.as_deref().map(crate::ui::datetime).unwrap_or_default();
                let until = until.get(11..16).unwrap_or_default().to_owned();
                view! {
                    <span class="who" data-who="admin">
                        <span class="avatar">"A"</span>
                        <span class="who-text">
                            <strong>"Administrator"</strong>
                            <span class="muted small">"session until " {until}</span>
                        </span>
                    </span>
                }
                .into_any()
            } else {
                let scopes = s.scopes.join(", ");
                let tenant = s.tenant.clone().unwrap_or_default();
                view! {
                    <span class="who" data-who="api_key" title=format!("Scopes: {scopes}")>
                        <span class="avatar avatar-key">"K"</span>
                        <span class="who-text">
                            <strong>"API key · " <span class="mono">{tenant}</span></strong>
                            <span class="muted small">{scopes.clone()}</span>
                        </span>
                    </span>
                }
                .into_any()
            }
        })
    };

    let content = move || {
        match route.get() {
        Route::Overview => view! { <crate::pages::overview::Overview /> }.into_any(),
        Route::Tenants if is_admin() => view! { <crate::pages::tenants::Tenants /> }.into_any(),
        Route::Audit if is_admin() => view! { <crate::pages::audit::GlobalAudit /> }.into_any(),
        Route::Tenants | Route::Audit => view! {
            <Empty title="Only the administrator may see this page." hint="Tenant API keys see their own tenant only." />
        }
        .into_any(),
        Route::Tenant(t, tab) => view! { <crate::pages::tenant::TenantPage tenant=t tab=tab /> }.into_any(),
        Route::Login => view! { <crate::ui::Loading /> }.into_any(),
        Route::NotFound => view! {
            <Empty title="There is no such page." hint="Pick a page in the navigation." />
        }
        .into_any(),
    }
    };

    view! {
        <div class="app">
            <aside class="sidebar">
                <Link href="/admin/" class="brand">
                    <Logo />
                    <span>"Herald"</span>
                </Link>
                <nav class="nav">
                    <div class="nav-section">
                        <NavItem
                            href="/admin/"
                            label="Overview"
                            active=Signal::derive(move || route.get() == Route::Overview)
                        />
                        <Show when=is_admin>
                            <NavItem
                                href="/admin/tenants"
                                label="Tenants"
                                active=Signal::derive(move || route.get() == Route::Tenants)
                            />
                            <NavItem
                                href="/admin/audit"
                                label="Audit log"
                                active=Signal::derive(move || route.get() == Route::Audit)
                            />
                        </Show>
                    </div>
                    {sidebar_tenant}
                </nav>
                <div class="sidebar-foot muted small">
                    <a href="/docs" target="_blank" rel="noopener">"API reference"</a>
                </div>
            </aside>
            <div class="main">
                <header class="topbar">
                    <div class="topbar-left">{status}</div>
                    <div class="topbar-right">
                        {who_view}
                        <button
                            type="button"
                            class="btn btn-small btn-ghost"
                            data-action="logout"
                            on:click=move |_| session::logout(Some("You have logged out."))
                        >
                            "Log out"
                        </button>
                    </div>
                </header>
                <main class="content">{content}</main>
            </div>
        </div>
    }
}
