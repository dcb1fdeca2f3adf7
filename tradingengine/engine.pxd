from tradingengine.margin cimport (bankruptcy_price, cost_removed, fee, liquidation_price,
                                   order_cost, position_margin)

cdef class Order:
    cdef public object order_id, account, symbol, client_order_id, side, ord_type, tif, flags
    cdef public object price, qty, leaves, cum, margin, state, pending
    cdef public object trigger_price, trigger_kind, trigger_by, reason, ce_id, sess, cxl, rpl
    cdef public object amend_price, amend_qty

cdef class Session:
    cdef public object user, session_id, conn_id, bound, default_account, accounts
    cdef public object cod_mode, cod_timeout_ms, next_expected, next_seq, cod_deadline
    cdef public object cod_cursor, held
    cdef public dict clordids, done, finished

cdef class Position:
    cdef public object size, cost, margin, extra, leverage_x100, mode, realised
    cdef public object buy_leaves, sell_leaves, reduce_only

cdef class Account:
    cdef public object account_id, balance, order_margin, position_margin
    cdef public object transferred, fees_paid, funding_paid, liquidated, covered
    cdef public dict positions, orders, by_client, replacing
    cdef public object dms_timeout_ms, dms_deadline

cdef class TradingEngine:
    cdef public object shard, n_shards, next_order_id, fee_pool, dust, deposits, withdrawals
    cdef public object seq, ts_ns, _timer_next, transfer_floor, _transfer_queue
    cdef public object _size, _sized, _unit_done, output_budget
    cdef public object _steps, _cmd_steps
    cdef public dict specs, accounts, marks, last_prices, funding_inputs, next_funding
    cdef public dict transfers, orders, ce_orders, conditional, holders, dms
    cdef public dict _touched, _handlers, _to_check, _owed_index
    cdef public list _out, sweeps
    cdef public Account clearing, liquidation
    cdef public dict _liq_dirty, _sess_replacing
    # read or written on every record: slots, not the instance __dict__
    cdef public object route, _ctx, _exec_n, duplicates_dropped, _audit_next
    cdef public object ce_sources, oracle_sources, gateway_sources, liq_sources, stp
    cdef public dict sessions, finalized, cod, user_sessions, _session_handlers, done_sess
    cdef public dict held
    cdef public dict _ce_src, _liq_src, _oracle_src, _gateway_src
    cdef public dict _liq_long, _liq_short, _liq_keys, _liq_always, _liq_rate, _trig_index
    # the per-event helpers, C calls from the compiled engine (a def method is an attribute
    # lookup, a bound method and an argument parse per call). Only methods that no subclass
    # overrides (tradingengine/reference.py, bench/) and nothing outside calls may be here.
    cdef _mine(self, account_id)
    cdef Position _position(self, Account acct, symbol)
    cdef _er(self, Order o, exec_type, last_px=*, last_qty=*, paid=*, code=*, liquidity=*,
             status=*)
    cdef _reject_order(self, coid, account, symbol, side, ord_type, price, qty, code)
    cdef _account_status(self, Account acct)
    cdef _position_status(self, Account acct, symbol)
    cdef tuple _liq_bk(self, Account acct, symbol, Position pos)
    cdef _cross_upnl(self, Account acct, skip=*)
    cdef _set_margin(self, Account acct, Position pos, spec)
    cdef _drop(self, Account acct, Order o)
    cdef _taker_steps(self, qty)
    cdef _rpl_done(self, Order o)
    cdef tuple _own_order(self, account, order_id)
    cdef _accepted(self, symbol, tuple ev)
    cdef _fill(self, Account acct, Order o, symbol, spec, signed, price, ppm, maker)
    cdef _book(self, Account acct, symbol, signed, price, spec)
    cdef _exec_id(self)
    cdef _session_er(self, Order o, exec_type, status, last_px, last_qty, code, liquidity)
    cdef _trigger(self, symbol, by, price)
    cdef _smsg(self, tuple key, template, tuple fields)
    cdef _enter_order(self, coid, account, symbol, price, qty, trig_px, side, ord_type, tif,
                      flags, trig_kind, trig_by)
    cdef _cover_deficit(self, Account acct)
    cdef _s_new_order(self, tuple key, Session sess, bytes block, seqno)
    cdef dict __dict__
