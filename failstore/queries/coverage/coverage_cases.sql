-- name: coverage_cases
-- description: The case mix of the latest coverage runs: per model, method, label and case, how
-- description: many images and their share of the label's images, with the mean scores (undefined
-- description: scores, NaN, left out). For a
-- description: dashboard's class x case grid. See docs/coverage.md.
-- param: model = NULL -- only this target model
-- param: method = NULL -- only this saliency method
SELECT
    c.model,
    c.method,
    c.explain,
    c.label,
    c."case",
    count(*) AS images,
    count(*) / sum(count(*)) OVER (PARTITION BY c.model, c.method, c.explain, c.label) AS rate,
    avg(c.iou) FILTER (WHERE NOT isnan(c.iou)) AS mean_iou,
    avg(c.gtc) FILTER (WHERE NOT isnan(c.gtc)) AS mean_gtc,
    avg(c.sc) FILTER (WHERE NOT isnan(c.sc)) AS mean_sc,
    avg(c.soft_sc) FILTER (WHERE NOT isnan(c.soft_sc)) AS mean_soft_sc
FROM coverage AS c
WHERE ($model IS NULL OR c.model = $model)
    AND ($method IS NULL OR c.method = $method)
GROUP BY c.model, c.method, c.explain, c.label, c."case"
ORDER BY c.model, c.method, c.label, images DESC, c."case"
