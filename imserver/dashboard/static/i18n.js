// zh-CN labels (the default) and English; the choice is kept in localStorage.
const TEXT = {
  "zh-CN": {
    title: "一屏统揽 · 运行看板", login_title: "一屏统揽 · 运行看板",
    login_label: "管理员密钥或管理员令牌", login_button: "登录", logout: "退出",
    users: "在线用户", this_node: "本节点", all_nodes: "全部节点", nodes_title: "节点",
    col_node: "节点", col_send_ack: "发送→确认 p50 / p95 / p99 (ms)", col_heard: "更新于", connections: "连接数", msg_rate: "消息/秒",
    delivery_rate: "投递/秒", send_ack: "发送→确认 (ms)", card_callback: "卡片操作→回调送达 (ms)",
    dings: "DING 确认", audit: "审计链", governance: "群组治理",
    chart_rates: "消息与投递 (每秒)", chart_connections: "连接数",
    units_title: "各单位卡片办理 (省 → 市 → 县 → 乡 → 村)", all_units: "全部",
    col_unit: "单位", col_level: "层级", col_people: "人数", col_pushed: "已推送", col_decided: "已办结",
    col_pending: "待处理卡片", col_todo: "待办积压", col_overdue: "逾期", col_oldest: "最早待办",
    callbacks_title: "回调发件箱 (按应用)", failed_title: "失败的回调", col_app: "应用",
    col_cb_pending: "排队中", col_cb_failed: "失败", col_cb_oldest: "最早排队", col_card: "卡片",
    col_attempts: "尝试次数", col_error: "最后错误", retry: "重试", retried: "已重新排队",
    total: "总计", confirmed: "已确认", awaiting: "待确认", ok: "完整", broken: "断裂",
    records: "条记录", zombie: "僵尸", empty: "空壳", duplicate: "重复", groups: "个群",
    live: "实时", offline: "已断开", connecting: "连接中", super: "超级管理员", scoped: "分级管理员",
    not_yours: "仅超级管理员可见", this_unit: "本单位", ago_s: "秒前", ago_m: "分钟前", ago_h: "小时前",
    ago_d: "天前", none: "无", lang: "English", level_province: "省", level_city: "市",
    level_county: "县", level_township: "乡", level_village: "村", level_department: "部门",
  },
  en: {
    title: "Operations dashboard", login_title: "Operations dashboard",
    login_label: "Admin key or admin token", login_button: "Log in", logout: "Log out",
    users: "Online users", this_node: "this node", all_nodes: "all nodes", nodes_title: "Nodes",
    col_node: "Node", col_send_ack: "Send→ack p50 / p95 / p99 (ms)", col_heard: "Updated", connections: "Connections", msg_rate: "Messages/s",
    delivery_rate: "Deliveries/s", send_ack: "Send→ack (ms)", card_callback: "Card act→callback (ms)",
    dings: "DING confirmations", audit: "Audit chain", governance: "Group governance",
    chart_rates: "Messages and deliveries per second", chart_connections: "Connections",
    units_title: "Card work per unit (province → city → county → township → village)", all_units: "All",
    col_unit: "Unit", col_level: "Level", col_people: "People", col_pushed: "Pushed", col_decided: "Decided",
    col_pending: "Pending cards", col_todo: "Todo backlog", col_overdue: "Overdue", col_oldest: "Oldest pending",
    callbacks_title: "Callback outbox per app", failed_title: "Failed callbacks", col_app: "App",
    col_cb_pending: "Queued", col_cb_failed: "Failed", col_cb_oldest: "Oldest queued", col_card: "Card",
    col_attempts: "Attempts", col_error: "Last error", retry: "Retry", retried: "queued again",
    total: "total", confirmed: "confirmed", awaiting: "awaiting", ok: "intact", broken: "BROKEN",
    records: "records", zombie: "zombie", empty: "empty", duplicate: "duplicate", groups: "groups",
    live: "live", offline: "disconnected", connecting: "connecting", super: "operator", scoped: "scoped admin",
    not_yours: "operator only", this_unit: "this unit", ago_s: "s ago", ago_m: "min ago", ago_h: "h ago",
    ago_d: "d ago", none: "none", lang: "中文", level_province: "province", level_city: "city",
    level_county: "county", level_township: "township", level_village: "village", level_department: "department",
  },
};

export let lang = localStorage.getItem("imserver.dashboard.lang") === "en" ? "en" : "zh-CN";

export function t(key) {
  return TEXT[lang][key] ?? TEXT["zh-CN"][key] ?? key;
}

export function applyLabels() {
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  const toggle = document.getElementById("lang-toggle");
  if (toggle) toggle.textContent = t("lang");
}

export function toggleLang() {
  lang = lang === "en" ? "zh-CN" : "en";
  localStorage.setItem("imserver.dashboard.lang", lang);
  applyLabels();
}

export function ago(ms) {
  if (ms == null) return "—";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)} ${t("ago_s")}`;
  if (s < 3600) return `${Math.round(s / 60)} ${t("ago_m")}`;
  if (s < 86400) return `${Math.round(s / 3600)} ${t("ago_h")}`;
  return `${Math.round(s / 86400)} ${t("ago_d")}`;
}
