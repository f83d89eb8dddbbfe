//! Widgets shared by the pages: links, form fields with their errors, empty/loading/error
//! states, lists read page by page, tables, copy and confirm buttons, time formatting.

use leptos::prelude::*;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;

use crate::api::{self, Load, Page, Problem};
use crate::router;

// ---- time -------------------------------------------------------------------------------------

/// Milliseconds since the epoch of an RFC 3339 time (NaN when it does not parse).
pub fn millis(rfc3339: &str) -> f64 {
    js_sys::Date::parse(rfc3339)
}

/// A local date and time, `2025-01-31 14:05:09`.
pub fn datetime_ms(ms: f64) -> String {
    if ms.is_nan() {
        return String::new();
    }
    let d = js_sys::Date::new(&JsValue::from_f64(ms));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        d.get_full_year(),
        d.get_month() + 1,
        d.get_date(),
        d.get_hours(),
        d.get_minutes(),
        d.get_seconds()
    )
}

pub fn datetime(rfc3339: &str) -> String {
    datetime_ms(millis(rfc3339))
}

/// `14:05:09.123` for message timestamps.
pub fn clock_ms(ms: f64) -> String {
    let d = js_sys::Date::new(&JsValue::from_f64(ms));
    format!("{:02}:{:02}:{:02}.{:03}", d.get_hours(), d.get_minutes(), d.get_seconds(), d.get_milliseconds())
}

/// "3 min ago", "in 2 h".
pub fn relative(rfc3339: &str) -> String {
    let t = millis(rfc3339);
    if t.is_nan() {
        return rfc3339.to_owned();
    }
    let diff = (js_sys::Date::now() - t) / 1000.0;
    let (n, unit) = match diff.abs() {
        s if s < 45.0 => return if diff >= 0.0 { "just now".into() } else { "in a few seconds".into() },
        s if s < 3600.0 => ((s / 60.0).round(), "min"),
        s if s < 86_400.0 => ((s / 3600.0).round(), "h"),
        s => ((s / 86_400.0).round(), "d"),
    };
    if diff >= 0.0 { format!("{n} {unit} ago") } else { format!("in {n} {unit}") }
}

/// A time cell: relative, with the exact local time as tooltip.
pub fn when(rfc3339: Option<&str>) -> AnyView {
    match rfc3339 {
        Some(t) => {
            let exact = datetime(t);
            view! { <time title=exact datetime=t.to_owned()>{relative(t)}</time> }.into_any()
        }
        None => view! { <span class="muted">"—"</span> }.into_any(),
    }
}

/// An RFC 3339 UTC time from a `datetime-local` input value (local time).
pub fn local_input_to_rfc3339(v: &str) -> Option<String> {
    if v.trim().is_empty() {
        return None;
    }
    let ms = js_sys::Date::parse(v);
    if ms.is_nan() {
        return Some(v.to_owned());
    }
    Some(String::from(js_sys::Date::new(&JsValue::from_f64(ms)).to_iso_string()))
}

// ---- navigation -------------------------------------------------------------------------------

/// An `<a>` that navigates inside the app (modified clicks open a new tab as usual).
#[component]
pub fn Link(
    #[prop(into)] href: String,
    #[prop(optional, into)] class: String,
    children: Children,
) -> impl IntoView {
    let target = href.clone();
    view! {
        <a
            href=href
            class=class
            on:click=move |ev: web_sys::MouseEvent| {
                if ev.ctrl_key() || ev.meta_key() || ev.shift_key() || ev.alt_key() || ev.button() != 0 {
                    return;
                }
                ev.prevent_default();
                router::navigate(&target);
            }
        >
            {children()}
        </a>
    }
}

// ---- states -----------------------------------------------------------------------------------

#[component]
pub fn Loading(#[prop(optional, into)] what: String) -> impl IntoView {
    let text = if what.is_empty() { "Loading…".to_owned() } else { format!("Loading {what}…") };
    view! {
        <div class="state loading" role="status">
            <span class="spinner"></span>
            {text}
        </div>
    }
}

#[component]
pub fn Empty(#[prop(into)] title: String, #[prop(optional, into)] hint: String) -> impl IntoView {
    view! {
        <div class="state empty">
            <div class="empty-icon">"∅"</div>
            <p class="empty-title">{title}</p>
            {(!hint.is_empty()).then(|| view! { <p class="muted">{hint}</p> })}
        </div>
    }
}

/// A problem shown as a box (for a page that could not load).
pub fn error_box(p: &Problem) -> impl IntoView + use<> {
    let hint = match p.code.as_str() {
        "missing_scope" => "This API key lacks the scope this page needs.",
        "admin_required" => "Only the administrator may see this page.",
        "tenant_suspended" => "The tenant is suspended; resume it on its settings page.",
        "network" => "Check that the server is running.",
        _ => "",
    };
    view! {
        <div class="alert alert-error" role="alert">
            <strong>{p.message()}</strong>
            {(!hint.is_empty()).then(|| view! { <span class="muted">" " {hint}</span> })}
            <code class="code-chip">{p.code.clone()}</code>
        </div>
    }
}

/// Shows a list's loading / failed state, or `ready` with the items.
pub fn load_view<T: Clone + 'static, V: IntoView + 'static>(
    state: Load<T>,
    what: &'static str,
    ready: impl FnOnce(T) -> V,
) -> AnyView {
    match state {
        Load::Loading => view! { <Loading what=what /> }.into_any(),
        Load::Failed(p) => error_box(&p).into_any(),
        Load::Ready(v) => ready(v).into_any(),
    }
}

// ---- lists -------------------------------------------------------------------------------------

/// Builds the path of a list's first page, with its query (`…?limit=50`).
type PathFn = Box<dyn Fn() -> String + Send + Sync>;
/// Takes a problem aside (returning `None`), or gives it back for the list to show.
type CatchFn = Box<dyn Fn(Problem) -> Option<Problem> + Send + Sync>;

/// A list read a page at a time: `list` holds the items loaded so far, and [`Paged::more`] is
/// the "Load more" button, shown while the server has a next page.
pub struct Paged<T: Send + Sync + 'static> {
    pub list: RwSignal<Load<Vec<T>>>,
    next: RwSignal<Option<String>>,
    path: StoredValue<PathFn>,
    catch: StoredValue<Option<CatchFn>>,
}

impl<T: Send + Sync + 'static> Clone for Paged<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Send + Sync + 'static> Copy for Paged<T> {}

impl<T> Paged<T>
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// A list whose first page is at `path()` (read when loading, so it may follow filters);
    /// the next pages add `&cursor=…` to it. Nothing is loaded until [`Paged::reload`].
    pub fn new(path: impl Fn() -> String + Send + Sync + 'static) -> Paged<T> {
        Paged {
            list: RwSignal::new(Load::Loading),
            next: RwSignal::new(None),
            path: StoredValue::new(Box::new(path)),
            catch: StoredValue::new(None),
        }
    }

    /// Lets `catch` take the problems it returns `None` for: the list keeps what it shows.
    pub fn catch(self, catch: impl Fn(Problem) -> Option<Problem> + Send + Sync + 'static) -> Paged<T> {
        self.catch.set_value(Some(Box::new(catch)));
        self
    }

    /// Loads the first page again (the list shows "Loading" meanwhile).
    pub fn reload(self) {
        self.list.set(Load::Loading);
        self.fetch(None);
    }

    fn fetch(self, cursor: Option<String>) {
        let mut path = self.path.with_value(|p| p());
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", api::enc(c)));
        }
        leptos::task::spawn_local(async move {
            match api::get::<Page<T>>(&path).await {
                Ok(page) => {
                    self.next.set(page.next_cursor);
                    if cursor.is_some() {
                        self.list.update(|l| {
                            if let Load::Ready(v) = l {
                                v.extend(page.items)
                            }
                        });
                    } else {
                        self.list.set(Load::Ready(page.items));
                    }
                }
                Err(p) => {
                    if let Some(p) = self.catch.with_value(|c| match c {
                        Some(catch) => catch(p),
                        None => Some(p),
                    }) {
                        self.list.set(Load::Failed(p));
                    }
                }
            }
        });
    }

    /// Reads the first page again without showing "Loading" meanwhile, for lists that change on
    /// their own (a delivery log): what is shown stays until the answer differs from it, and
    /// then becomes that first page.
    pub fn refresh(self)
    where
        T: PartialEq,
    {
        let path = self.path.with_value(|p| p());
        leptos::task::spawn_local(async move {
            match api::get::<Page<T>>(&path).await {
                Ok(page) => {
                    if self.next.with_untracked(|n| *n != page.next_cursor) {
                        self.next.set(page.next_cursor);
                    }
                    if !self.list.with_untracked(|l| matches!(l, Load::Ready(v) if *v == page.items)) {
                        self.list.set(Load::Ready(page.items));
                    }
                }
                Err(p) => {
                    if let Some(p) = self.catch.with_value(|c| match c {
                        Some(catch) => catch(p),
                        None => Some(p),
                    }) {
                        self.list.set(Load::Failed(p));
                    }
                }
            }
        });
    }

    /// The "Load more" button, while there is a next page.
    pub fn more(self) -> impl IntoView {
        move || {
            self.next.get().map(|c| {
                view! {
                    <button
                        type="button"
                        class="btn btn-ghost load-more"
                        on:click=move |_| self.fetch(Some(c.clone()))
                    >
                        "Load more"
                    </button>
                }
            })
        }
    }
}

// ---- tables ------------------------------------------------------------------------------------

/// A table of items: its header row, then a row per item, or an empty state when there are
/// none. Built step by step, then drawn by [`Table::rows`]:
///
/// `Table::new("keys").wide().cols(&["Key", "Created"]).empty("No keys yet.", "").rows(items, row)`
pub struct Table {
    /// `data-table`, which tests and styles find the table by.
    name: Option<&'static str>,
    /// In a `table-wrap` box that scrolls sideways.
    wide: bool,
    /// Label and class of each column.
    cols: Vec<(String, Option<&'static str>)>,
    /// Title and hint shown instead of the table when there are no rows.
    empty: Option<(String, String)>,
    before: Option<AnyView>,
    after: Option<AnyView>,
}

impl Table {
    /// A table with `data-table=name`.
    pub fn new(name: &'static str) -> Table {
        Table { name: Some(name), ..Table::unnamed() }
    }

    /// A table without a `data-table` attribute.
    pub fn unnamed() -> Table {
        Table { name: None, wide: false, cols: Vec::new(), empty: None, before: None, after: None }
    }

    /// Inside a `table-wrap` box, for tables wider than the page.
    pub fn wide(mut self) -> Table {
        self.wide = true;
        self
    }

    /// One column (an empty label for a column of buttons).
    pub fn col(mut self, label: impl Into<String>) -> Table {
        self.cols.push((label.into(), None));
        self
    }

    /// A column, only when `shown`.
    pub fn col_if(self, shown: bool, label: &str) -> Table {
        if shown { self.col(label) } else { self }
    }

    /// Columns in order.
    pub fn cols(self, labels: &[&str]) -> Table {
        labels.iter().fold(self, |t, l| t.col(*l))
    }

    /// Columns of figures (right-aligned, `class="num"`).
    pub fn nums(mut self, labels: &[&str]) -> Table {
        self.cols.extend(labels.iter().map(|l| ((*l).to_owned(), Some("num"))));
        self
    }

    /// The [`Empty`] state shown instead of the table when there are no rows (without one, an
    /// empty table is drawn).
    pub fn empty(mut self, title: impl Into<String>, hint: impl Into<String>) -> Table {
        self.empty = Some((title.into(), hint.into()));
        self
    }

    /// Shown above the table (not with the empty state).
    pub fn before(mut self, v: impl IntoView + 'static) -> Table {
        self.before = Some(v.into_any());
        self
    }

    /// Shown under the table (not with the empty state).
    pub fn after(mut self, v: impl IntoView + 'static) -> Table {
        self.after = Some(v.into_any());
        self
    }

    /// The table with a row (a `<tr>`) per item, or the empty state.
    pub fn rows<T, V: IntoView + 'static>(
        self,
        items: impl IntoIterator<Item = T>,
        row: impl FnMut(T) -> V,
    ) -> AnyView {
        let rows = items.into_iter().map(row).collect::<Vec<_>>();
        if rows.is_empty() {
            if let Some((title, hint)) = self.empty {
                return view! { <Empty title=title hint=hint /> }.into_any();
            }
        }
        let head = self
            .cols
            .into_iter()
            .map(|(label, class)| view! { <th class=class>{label}</th> })
            .collect::<Vec<_>>();
        let table = view! {
            <table class="table" data-table=self.name>
                <thead>
                    <tr>{head}</tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        };
        let table = if self.wide {
            view! { <div class="table-wrap">{table}</div> }.into_any()
        } else {
            table.into_any()
        };
        view! {
            {self.before}
            {table}
            {self.after}
        }
        .into_any()
    }
}

// ---- forms ------------------------------------------------------------------------------------

/// The error of `errors` when it concerns `field`.
pub fn field_error(errors: RwSignal<Option<Problem>>, field: &'static str) -> impl IntoView {
    move || {
        errors.with(|e| match e {
            Some(p) if p.is_about(field) => {
                Some(view! { <p class="field-error" data-field=field>{p.message()}</p> })
            }
            _ => None,
        })
    }
}

/// A labelled form field; the problem whose `field` names it is shown under it.
#[component]
pub fn Field(
    #[prop(into)] label: String,
    field: &'static str,
    errors: RwSignal<Option<Problem>>,
    #[prop(optional, into)] hint: String,
    children: Children,
) -> impl IntoView {
    view! {
        <div class="field" class:has-error=move || errors.with(|e| e.as_ref().is_some_and(|p| p.is_about(field)))>
            <label class="label">{label}</label>
            {children()}
            {(!hint.is_empty()).then(|| view! { <p class="hint">{hint}</p> })}
            {field_error(errors, field)}
        </div>
    }
}

/// A form's error that no field shows (`fields` lists the fields the form has).
pub fn form_error(errors: RwSignal<Option<Problem>>, fields: &'static [&'static str]) -> impl IntoView {
    move || {
        errors.with(|e| match e {
            Some(p) if !fields.iter().any(|f| p.is_about(f)) => Some(view! {
                <div class="alert alert-error form-error" role="alert">
                    {p.message()}
                    <code class="code-chip">{p.code.clone()}</code>
                </div>
            }),
            _ => None,
        })
    }
}

/// A form's submit handler: the browser does not send the form, `f` runs instead.
pub fn on_submit(f: impl Fn() + 'static) -> impl Fn(leptos::ev::SubmitEvent) + 'static {
    move |ev| {
        ev.prevent_default();
        f();
    }
}

/// A text input bound to a signal.
pub fn text_input(value: RwSignal<String>, name: &'static str, placeholder: &'static str) -> impl IntoView {
    view! {
        <input
            type="text"
            name=name
            placeholder=placeholder
            autocomplete="off"
            prop:value=move || value.get()
            on:input=move |ev| value.set(event_target_value(&ev))
        />
    }
}

/// A number input bound to a string signal (empty = not set).
pub fn number_input(value: RwSignal<String>, name: &'static str, placeholder: &'static str) -> impl IntoView {
    view! {
        <input
            type="number"
            name=name
            min="0"
            placeholder=placeholder
            prop:value=move || value.get()
            on:input=move |ev| value.set(event_target_value(&ev))
        />
    }
}

/// A number field's value: `Ok(None)` when empty, an error on `field` when not a number.
pub fn parse_number(v: &str, field: &str) -> Result<Option<i64>, Problem> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<i64>().map(Some).map_err(|_| Problem::on_field(field, "Enter a whole number."))
}

// ---- buttons ----------------------------------------------------------------------------------

/// Copies `text` to the clipboard, saying so for a moment.
#[component]
pub fn CopyButton(#[prop(into)] text: String, #[prop(optional, into)] label: String) -> impl IntoView {
    let copied = RwSignal::new(false);
    let label = if label.is_empty() { "Copy".to_owned() } else { label };
    let text = StoredValue::new(text);
    let on_click = move |_| {
        let text = text.get_value();
        leptos::task::spawn_local(async move {
            let navigator = window().navigator();
            let has_clipboard = js_sys::Reflect::get(&navigator, &JsValue::from_str("clipboard"))
                .is_ok_and(|c| !c.is_undefined());
            if has_clipboard && JsFuture::from(navigator.clipboard().write_text(&text)).await.is_ok() {
                copied.set(true);
                set_timeout(move || copied.set(false), std::time::Duration::from_secs(2));
            }
        });
    };
    view! {
        <button type="button" class="btn btn-small" on:click=on_click>
            {move || if copied.get() { "Copied ✓".to_owned() } else { label.clone() }}
        </button>
    }
}

/// A button that asks for confirmation in place before running `action`.
#[component]
pub fn ConfirmButton(
    #[prop(into)] label: String,
    #[prop(into)] confirm: String,
    #[prop(optional, into)] class: String,
    action: Callback<()>,
) -> impl IntoView {
    let armed = RwSignal::new(false);
    let class = if class.is_empty() { "btn btn-small".to_owned() } else { class };
    let confirm_class = format!("{class} btn-confirm");
    move || {
        if armed.get() {
            view! {
                <span class="confirm">
                    <button
                        type="button"
                        class=confirm_class.clone()
                        on:click=move |_| {
                            armed.set(false);
                            action.run(());
                        }
                    >
                        {confirm.clone()}
                    </button>
                    <button type="button" class="btn btn-small btn-ghost" on:click=move |_| armed.set(false)>
                        "Cancel"
                    </button>
                </span>
            }
            .into_any()
        } else {
            view! {
                <button type="button" class=class.clone() on:click=move |_| armed.set(true)>
                    {label.clone()}
                </button>
            }
            .into_any()
        }
    }
}

/// A coloured status pill.
pub fn badge(text: &str, tone: &'static str) -> impl IntoView + use<> {
    view! { <span class=format!("badge badge-{tone}")>{text.to_owned()}</span> }
}

/// A secret shown once, with a copy button.
#[component]
pub fn SecretOnce(
    #[prop(into)] title: String,
    #[prop(into)] secret: String,
    #[prop(optional, into)] note: String,
    on_done: Callback<()>,
) -> impl IntoView {
    view! {
        <div class="alert alert-secret" role="alert" data-secret="">
            <div class="secret-head">
                <strong>{title}</strong>
                <span class="muted">
                    {if note.is_empty() {
                        "Copy it now: it is shown only once and cannot be retrieved later.".to_owned()
                    } else {
                        note
                    }}
                </span>
            </div>
            <div class="secret-row">
                <code class="secret" data-testid="secret">{secret.clone()}</code>
                <CopyButton text=secret />
                <button type="button" class="btn btn-small btn-ghost" on:click=move |_| on_done.run(())>
                    "I have copied it"
                </button>
            </div>
        </div>
    }
}
