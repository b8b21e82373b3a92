// Types that scripts/check-dashboard checks a dashboard JSON file against. Everything comes from Grafana's own
// schema package (@grafana/schema, pinned in package.json) except the two query shapes at the end, which
// @grafana/schema does not publish (they live in the data source plugins).
//
// Why not only `<json> satisfies Dashboard`:
//  * @grafana/schema uses TypeScript string enums (FieldColorModeId, ThresholdsMode, LegendDisplayMode...), and a
//    JSON string such as "absolute" is not assignable to a string enum: `Json<T>` below turns every enum into the
//    union of its values, which is what the JSON file holds.
//  * Grafana's `Panel` types `options`, `fieldConfig.defaults.custom` and `targets` as `Record<string, unknown>`,
//    so a typo inside them passes. `VidrecPanel` picks the panel plugin's own option and field-config types from
//    @grafana/schema by the panel's `type` (a discriminated union, so TypeScript's excess-property check names an
//    unknown key at any depth), and types the targets by data source.
// The generated file also checks that the whole dashboard satisfies Grafana's plain `Dashboard`.
import type { Dashboard, DataQuery, FieldConfig, FieldConfigSource, Panel, RowPanel } from '@grafana/schema';
import type {
  FieldConfig as TimeSeriesFieldConfig,
  Options as TimeSeriesOptions,
} from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type { Options as StatOptions } from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type {
  FieldConfig as TableFieldConfig,
  Options as TableOptions,
} from '@grafana/schema/dist/esm/raw/composable/table/panelcfg/x/TablePanelCfg_types.gen';
import type {
  FieldConfig as StateTimelineFieldConfig,
  Options as StateTimelineOptions,
} from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';
import type { Options as BarGaugeOptions } from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';

/** What a JSON file can hold for T: string enums become the union of their values, recursively. */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

/** Field config with the plugin's own `custom` type (Grafana's adds `& Record<string, unknown>`, which lets any key through). */
type StrictFieldConfigSource<Custom> = Omit<FieldConfigSource, 'defaults'> & {
  defaults: Omit<FieldConfig, 'custom'> & { custom?: Partial<Custom> };
};

/** Grafana's Panel with options, field config and targets typed for one plugin. Options are partial: Grafana fills the rest from the plugin's defaults. */
type TypedPanel<Type extends string, Options, Custom, Target> = Omit<Panel, 'type' | 'options' | 'fieldConfig' | 'targets'> & {
  type: Type;
  options?: Partial<Options>;
  fieldConfig?: StrictFieldConfigSource<Custom>;
  targets?: Target[];
};

/** A Prometheus target: the fields of Grafana's PromQuery (public/app/plugins/datasource/prometheus/dataquery.cue). */
export interface PrometheusTarget extends DataQuery {
  datasource: { type: 'prometheus'; uid: string };
  expr: string;
  editorMode?: 'code' | 'builder';
  exemplar?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  instant?: boolean;
  range?: boolean;
  interval?: string;
  intervalFactor?: number;
  legendFormat?: string;
}

/** An Infinity data source target reading JSON from a URL: the fields of the plugin's InfinityJSONQuery
 * (grafana/grafana-infinity-datasource, src/types/query.types.ts), plugin id yesoreyeram-infinity-datasource. */
export interface InfinityTarget extends DataQuery {
  datasource: { type: 'yesoreyeram-infinity-datasource'; uid: string };
  type: 'json';
  source: 'url';
  parser?: 'simple' | 'backend';
  format: 'table' | 'timeseries' | 'dataframe' | 'as-is';
  url: string;
  url_options: { method: 'GET' | 'POST'; data?: string; params?: Array<{ key: string; value: string }>; headers?: Array<{ key: string; value: string }> };
  root_selector: string;
  columns: Array<{
    selector: string;
    text: string;
    type: 'string' | 'number' | 'timestamp' | 'timestamp_epoch' | 'timestamp_epoch_s';
    timestampFormat?: string;
  }>;
  filters?: Array<{ field: string; operator: string; value: string[] }>;
}

type Target = PrometheusTarget | InfinityTarget;

export type VidrecPanel =
  | TypedPanel<'timeseries', TimeSeriesOptions, TimeSeriesFieldConfig, Target>
  | TypedPanel<'stat', StatOptions, Record<never, never>, Target>
  | TypedPanel<'table', TableOptions, TableFieldConfig, Target>
  | TypedPanel<'state-timeline', StateTimelineOptions, StateTimelineFieldConfig, Target>
  | TypedPanel<'bargauge', BarGaugeOptions, Record<never, never>, Target>;

type VidrecRow = Omit<RowPanel, 'panels'> & { panels: VidrecPanel[] };

/** Grafana's Dashboard with every panel one of the typed panels above (or a row of them). */
export type VidrecDashboard = Json<Omit<Dashboard, 'panels'> & { panels?: Array<VidrecPanel | VidrecRow> }>;

/** Grafana's own Dashboard type, as JSON. */
export type GrafanaDashboard = Json<Dashboard>;
