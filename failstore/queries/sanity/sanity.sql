-- name: sanity
-- description: Can each attribution method be trusted on this model? The verdicts of the latest
-- description: `failstore sanity` run of each target model and test (cascading / independent
-- description: model randomisation, spurious background, reference model): the figure, its 95 %
-- description: bootstrap interval, the threshold and the verdict with its reason. See docs/sanity.md.
-- param: model = NULL -- only this target model
-- param: test = NULL -- only this test
-- param: method = NULL -- only this attribution method
SELECT v.*
FROM sanity_verdicts AS v
WHERE v.run_id IN (
    SELECT arg_max(r.run_id, r.used_at)
    FROM analysis_runs AS r
    WHERE r.analysis = 'sanity'
    GROUP BY r.run_key
)
    AND ($model IS NULL OR v.model = $model)
    AND ($test IS NULL OR v.test = $test)
    AND ($method IS NULL OR v.method = $method)
ORDER BY v.model, v.test, v.method
