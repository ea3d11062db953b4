//! The lists of the API (`/api/v1/flows`, `/api/v1/incidents`) and their
//! one pagination scheme: `limit` (default [`PAGE_DEFAULT`], at most
//! [`PAGE_MAX`]) and `cursor`, the `next_cursor` of the previous page,
//! present while more follow.
//!
//! A page of flows is read off the live table a chunk at a time (see
//! [`SharedTable::scan`]) on a blocking thread and serialised there, so no
//! request holds the table's lock across sorting or serialisation and a
//! request's memory is its page, whatever the table's size.

use std::ops::ControlFlow;
use std::sync::Arc;

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};

use super::{bad_request, poisoned, ApiState};
use crate::flow::{
    rank::{BadCursor, Cursor, RankBy, TopK},
    shared::Poisoned,
    FlowSummary, SharedTable,
};

/// Items in a page when the request gives no `limit`.
pub const PAGE_DEFAULT: usize = 1_000;
/// The largest `limit`.
pub const PAGE_MAX: usize = 10_000;

/// `/api/v1/flows?sort=KEY&limit=N&cursor=C`.
#[derive(serde::Deserialize)]
pub(super) struct FlowsQuery {
    sort: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `/api/v1/incidents?limit=N&cursor=C`.
#[derive(serde::Deserialize)]
pub(super) struct IncidentsQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// A `limit` outside 1 to [`PAGE_MAX`].
#[derive(Debug, thiserror::Error)]
#[error("limit {0} is out of range 1..={PAGE_MAX}")]
struct LimitOutOfRange(usize);

/// The page size asked for, within its range.
fn page_limit(limit: Option<usize>) -> Result<usize, LimitOutOfRange> {
    match limit.unwrap_or(PAGE_DEFAULT) {
        n @ 1..=PAGE_MAX => Ok(n),
        n => Err(LimitOutOfRange(n)),
    }
}

const BAD_QUERY: &str = "bad query: expected limit=N (1 to 10000) and cursor=C";

/// Body of `/api/v1/flows`.
#[derive(serde::Serialize)]
pub(crate) struct FlowsPage {
    /// Flows tracked in all.
    total: usize,
    /// Sort key, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    sort: Option<String>,
    /// Where the next page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next_cursor: Option<String>,
    /// The page.
    pub(crate) flows: Vec<FlowSummary>,
}

/// `/api/v1/flows`: flows in table order, or the worst by `sort`
/// (largest first), a page at a time.
pub(super) async fn flows(
    State(s): State<ApiState>,
    q: Result<Query<FlowsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_request(format_args!("{BAD_QUERY}, sort=KEY"));
    };
    let by = match q.sort.as_deref().map(str::parse::<RankBy>).transpose() {
        Ok(by) => by,
        Err(e) => return bad_request(e),
    };
    let limit = match page_limit(q.limit) {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    let cursor = match q.cursor.as_deref().map(str::parse::<Cursor>).transpose() {
        Ok(c) => c,
        Err(e) => return bad_request(e),
    };
    let table = s.flows.clone();
    let job = tokio::task::spawn_blocking(move || {
        let page = flow_page(&table, by, cursor, limit)?;
        Ok::<_, PageError>(serde_json::to_vec(&page))
    });
    match job.await {
        Ok(Ok(Ok(body))) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Err(PageError::Cursor(e))) => bad_request(e),
        Ok(Err(PageError::Poisoned(_))) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "flow table poisoned\n").into_response()
        }
        Ok(Ok(Err(e))) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// A page that cannot be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PageError {
    #[error(transparent)]
    Cursor(#[from] BadCursor),
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
}

/// One page of the live table: from the cursor's slot in table order, or
/// the first `limit` ranked after the cursor's position.
pub(crate) fn flow_page(
    table: &SharedTable,
    by: Option<RankBy>,
    cursor: Option<Cursor>,
    limit: usize,
) -> Result<FlowsPage, PageError> {
    let total = table.read(|t| t.len())?;
    let (flows, next) = match by {
        None => {
            let from = match cursor {
                None => 0,
                Some(Cursor::Slot(s)) => s,
                Some(Cursor::After(..)) => return Err(BadCursor.into()),
            };
            let mut page = Vec::with_capacity(limit.min(total));
            let stop = table.scan(from, |_, f| {
                if page.len() == limit {
                    return ControlFlow::Break(());
                }
                page.push(f.clone());
                ControlFlow::Continue(())
            })?;
            (page, stop.map(Cursor::Slot))
        }
        Some(by) => {
            let after = match cursor {
                None => None,
                Some(Cursor::After(k, p)) if k == by => Some(p),
                Some(_) => return Err(BadCursor.into()),
            };
            // One more than the page, to know whether another follows.
            let mut top = TopK::new(by, limit + 1, after);
            table.scan(0, |slot, f| {
                top.offer(slot, f);
                ControlFlow::Continue(())
            })?;
            let mut ranked = top.into_sorted();
            let more = ranked.len() > limit;
            ranked.truncate(limit);
            let next = ranked
                .last()
                .filter(|_| more)
                .map(|(p, _)| Cursor::After(by, *p));
            (ranked.into_iter().map(|(_, f)| f).collect(), next)
        }
    };
    Ok(FlowsPage {
        total,
        sort: by.map(|b| b.to_string()),
        next_cursor: next.map(|c| c.to_string()),
        flows,
    })
}

/// Body of `/api/v1/incidents`: firing (oldest first), then resolved
/// (newest first), a page at a time.
#[derive(serde::Serialize)]
struct IncidentsPage {
    /// Incidents listed in all.
    total: usize,
    /// Where the next page starts; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
    incidents: Vec<crate::alerting::Incident>,
}

/// `/api/v1/incidents`; the cursor is an offset in the list (`i<N>`).
pub(super) async fn incidents(
    State(s): State<ApiState>,
    q: Result<Query<IncidentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_request(BAD_QUERY);
    };
    let limit = match page_limit(q.limit) {
        Ok(n) => n,
        Err(e) => return bad_request(e),
    };
    let from = match q.cursor.as_deref() {
        None => 0,
        Some(c) => match c.strip_prefix('i').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => n,
            None => return bad_request(BadCursor),
        },
    };
    let manager = Arc::clone(&s.incidents.manager);
    let Ok(m) = manager.lock() else {
        return poisoned();
    };
    let list = m.list();
    let total = list.len();
    let incidents: Vec<_> = list.into_iter().skip(from).take(limit).cloned().collect();
    drop(m);
    let end = from.saturating_add(incidents.len());
    axum::Json(IncidentsPage {
        total,
        next_cursor: (end < total).then(|| format!("i{end}")),
        incidents,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowConfig, FlowTable};

    /// `n` one-packet UDP flows; every third has a second packet.
    fn table(n: u16) -> SharedTable {
        let mut t = FlowTable::new(FlowConfig::default());
        for port in 0..n {
            t.ingest(&crate::flow::udp_record(1024 + port, 1_000));
            if port % 3 == 0 {
                t.ingest(&crate::flow::udp_record(1024 + port, 2_000));
            }
        }
        SharedTable::new(t)
    }

    /// Every page from the first, following `next_cursor`.
    fn walk(t: &SharedTable, by: Option<RankBy>, limit: usize) -> Vec<FlowsPage> {
        let mut pages = Vec::new();
        let mut cursor = None;
        loop {
            let page = flow_page(t, by, cursor, limit).expect("page");
            cursor = page
                .next_cursor
                .as_deref()
                .map(|c| c.parse().expect("our cursor parses"));
            pages.push(page);
            if cursor.is_none() {
                return pages;
            }
        }
    }

    #[test]
    fn pages_in_table_order_cover_every_flow_once() {
        let t = table(2_500);
        let pages = walk(&t, None, PAGE_DEFAULT);
        let sizes: Vec<usize> = pages.iter().map(|p| p.flows.len()).collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
        assert!(pages.iter().all(|p| p.total == 2_500));
        let mut ports: Vec<u16> = pages
            .iter()
            .flat_map(|p| p.flows.iter().map(|f| f.sport))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 2_500);
    }

    #[test]
    fn ranked_pages_list_the_worst_first_and_end() {
        let t = table(1_000);
        let pages = walk(&t, Some(RankBy::Packets), 300);
        let flows: Vec<&FlowSummary> = pages.iter().flat_map(|p| &p.flows).collect();
        assert_eq!(flows.len(), 1_000);
        // The 334 two-packet flows, then the one-packet ones.
        assert!(flows[..334].iter().all(|f| f.packets == 2));
        assert!(flows[334..].iter().all(|f| f.packets == 1));
        assert_eq!(pages.last().map(|p| p.next_cursor.is_none()), Some(true));
    }

    #[test]
    fn a_cursor_of_another_list_is_refused() {
        let t = table(10);
        let ranked = Cursor::After(
            RankBy::Packets,
            crate::flow::rank::Position::of(
                RankBy::Packets,
                0,
                &t.read(|t| t.snapshot()).expect("read")[0],
            ),
        );
        assert!(flow_page(&t, None, Some(ranked), 5).is_err());
        assert!(flow_page(&t, Some(RankBy::Bytes), Some(ranked), 5).is_err());
        assert!(flow_page(&t, Some(RankBy::Packets), Some(Cursor::Slot(3)), 5).is_err());
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(PAGE_MAX + 1)).is_err());
        assert_eq!(page_limit(None).ok(), Some(PAGE_DEFAULT));
    }
}
